"""``crossframe compare CONFIG --backends torch,jax,tensorflow`` and ``crossframe bench``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click


@click.command("compare")
@click.argument("config", required=False)
@click.option("--backends", "-b", default="torch,jax,tensorflow", show_default=True,
              help="Comma-separated backends; each runs in its own process.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value for every backend (repeatable).")
@click.option("--out", type=click.Path(file_okay=False), metavar="DIR",
              help="Output directory (default: the config's output_dir); the report goes to DIR/compare/.")
@click.option("--steps", type=int, help="Shortcut for --set train.steps=N.")
@click.option("--threads", metavar="N|auto",
              help="CPU threads every backend gets (default: the config's threads, auto: the idle cores).")
@click.option("--quiet", "-q", is_flag=True, help="No live progress.")
@click.option("--json", "as_json", is_flag=True, help="Print results.json instead of the table.")
def compare_command(config: str | None, backends: str, overrides: tuple[str, ...], out: str | None,
                    steps: int | None, threads: str | None, quiet: bool, as_json: bool) -> None:
    """Train CONFIG (a file or a built-in preset) on each backend from the same initial weights and batches;
    compare numerics, speed, memory, accuracy and exports. Writes report.md, report.html, results.json and plots."""
    import json

    from crossframe.compare.api import compare
    from crossframe.errors import UsageError

    if threads is not None and threads != "auto" and not (threads.isdigit() and int(threads) > 0):
        raise UsageError(f"--threads: a count >= 1 or 'auto', got {threads!r}")
    count = int(threads) if threads and threads.isdigit() else threads
    results = compare(config, backends, overrides, out=out, steps=steps, progress=not quiet, threads=count)
    if as_json:
        click.echo(json.dumps(results, indent=2))
    else:
        from crossframe.compare.report import print_table

        print_table(results)
    where = Path(results["config"]["output_dir"]) / "compare"
    click.echo(f"report: {where / 'report.md'}  (also report.html, results.json)", err=as_json)
    if all(r["status"] != "ok" for r in results["results"]):
        from crossframe.errors import RunError

        raise RunError("compare: no backend completed; see each row's error above")


@click.command("bench", context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                         "help_option_names": []}, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench_command(args: tuple[str, ...]) -> None:
    """Run the repository's benchmarks (python -m benchmarks ARGS; --help is theirs) from a source checkout."""
    if not (Path.cwd() / "benchmarks" / "__main__.py").is_file():
        from crossframe.errors import UsageError

        raise UsageError("bench: no benchmarks/ in this directory; run it from a crossframe source checkout "
                         "(the benchmarks are a repository tool, not part of the package)")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path.cwd()), env.get("PYTHONPATH", "")) if p)
    code = subprocess.call([sys.executable, "-m", "benchmarks", *args], env=env)
    if code:
        from crossframe.errors import RunError

        raise RunError(f"bench: python -m benchmarks exited {code}")
