"""``crossframe cv CONFIG --folds K [--jobs N] [--backend B]``: k-fold cross-validation."""

from __future__ import annotations

import json

import click


@click.command("cv")
@click.argument("config", required=False)
@click.option("--folds", "-k", type=int, default=5, show_default=True, help="Number of folds.")
@click.option("--jobs", "-j", type=int, default=1, show_default=True,
              help="Folds trained at once, each in its own process with one CPU thread.")
@click.option("--backend", "-b", help="Train every fold on this backend.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a value (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print cv.json instead of the table.")
def cv_command(config: str | None, folds: int, jobs: int, backend: str | None, overrides: tuple[str, ...],
               as_json: bool) -> None:
    """Train CONFIG on K folds (stratified or grouped as data.split says) and report every validation
    metric per fold with its mean ± std; writes cv.json next to the fold runs."""
    from crossframe.tables import show_table
    from crossframe.train.crossval import SUMMARY_FILE, cross_validate, summary_rows

    summary = cross_validate(config, overrides, folds=folds, jobs=jobs, backend=backend)
    if as_json:
        click.echo(json.dumps(summary, indent=1))
        return
    headers, rows = summary_rows(summary)
    show_table(f"{folds}-fold cross-validation on {summary['backend']}", headers, rows)
    click.echo(f"summary: {summary['cv_dir']}/{SUMMARY_FILE}")


COMMANDS = [cv_command]
