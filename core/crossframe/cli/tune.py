"""``crossframe tune CONFIG``: a hyperparameter study on Optuna. Heavy imports stay inside."""

from __future__ import annotations

import click


@click.command("tune")
@click.argument("config", required=False)
@click.option("--backend", "-b", help="Backend every trial trains on (overrides the config's 'backend').")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set train.steps=300 or --set tune.trials=10 (repeatable).")
@click.option("--jobs", "-j", default=1, show_default=True, type=click.IntRange(min=1),
              help="Trials at once, each in its own process with cores/N threads.")
@click.option("--storage", metavar="URL",
              help="Optuna RDB storage shared with other workers (default: study.db in the study directory).")
@click.option("--resume", type=click.Path(), metavar="STUDY_DIR",
              help="Continue the study in STUDY_DIR: finished trials are kept, those a dead process left run again.")
@click.option("--trials", type=click.IntRange(min=1), help="Shortcut for --set tune.trials=N.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Shortcut for --set tune.timeout_s=S: start no trial after this.")
@click.option("--launcher", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Run the --jobs workers here, or as tasks on a Ray cluster (RAY_ADDRESS, or a local one).")
@click.option("--quiet", "-q", is_flag=True, help="No trial lines, bar or table.")
def tune_command(config: str | None, backend: str | None, overrides: tuple[str, ...], jobs: int, storage: str | None,
                 resume: str | None, trials: int | None, timeout_s: float | None, launcher: str, quiet: bool) -> None:
    """Search CONFIG's 'tune:' space (a file or preset); each trial is a run in STUDY_DIR/trials/NNNN.

    Writes best_config.yaml (for crossframe run), results.json, plots/*.png and report.html.
    """
    from crossframe.tune.api import tune

    result = tune(config, overrides, backend=backend, jobs=jobs, storage=storage, resume=resume, trials=trials,
                  timeout_s=timeout_s, launcher=launcher, quiet=quiet)
    summary = result.summary
    c = summary["counts"]
    if result.best_value is None:
        click.echo(f"no trial completed ({c['pruned']} pruned, {c['failed']} failed); study: {result.study_dir}")
    else:
        click.echo(f"best {summary['metric']} {result.best_value:.6g} (trial {summary['best']['number']}); "
                   f"{c['complete']} complete, {c['pruned']} pruned, {c['failed']} failed")
        click.echo(f"best config: {result.best_config}  (crossframe run {result.best_config})")
    click.echo(f"report: {result.study_dir / 'report.html'}")


COMMANDS = [tune_command]
