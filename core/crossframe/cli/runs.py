"""``crossframe runs``: list run directories; ``runs show RUN``; ``runs diff A B``."""

from __future__ import annotations

import json
import time
from typing import Any

import click


def human_size(size: int) -> str:
    """``1536`` -> ``1.5 KiB``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for i, column in enumerate(columns):
        table.add_column(column, overflow="fold", no_wrap=i == 0)
    for row in rows:
        table.add_row(*(_value(v) for v in row))
    Console().print(table)


@click.group("runs", invoke_without_command=True)
@click.option("--root", "-r", default="runs", show_default=True, type=click.Path(file_okay=False),
              help="Directory holding run directories (a config's output_dir).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def runs_group(ctx: click.Context, root: str, as_json: bool) -> None:
    """List runs: name, backend, model, steps, status, best metric, started, size (newest first)."""
    if ctx.invoked_subcommand is not None:
        return
    from crossframe.runs import list_runs

    found = list_runs(root)
    if as_json:
        click.echo(json.dumps([s.to_json() for s in found], indent=2))
        return
    rows = [[s.name, s.backend, s.model, s.steps, s.status,
             f"{s.metric} {s.best:.4g}" if s.metric and s.best is not None else "",
             time.strftime("%Y-%m-%d %H:%M", time.localtime(s.started)), human_size(s.size_bytes)] for s in found]
    _table(f"runs in {root} ({len(found)})",
           ["name", "backend", "model", "steps", "status", "best metric", "started", "size"], rows)


@runs_group.command("show")
@click.argument("run_dir", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def runs_show(run_dir: str, as_json: bool) -> None:
    """Config diff against the parent run, metrics summary, checkpoints and exports of RUN_DIR."""
    from crossframe.runs.detail import show

    info = show(run_dir)
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
        return
    s = info["summary"]
    click.echo(f"{s['name']}: {s['backend']} {s['model']}, {s['steps']} steps, {s['status']}, "
               f"{human_size(s['size_bytes'])}")
    if info["parent"]:
        click.echo(f"parent: {info['parent']}")
        _table("config vs parent", ["key", "parent", "this run"], [list(r) for r in info["config_diff"]])
    _table("metrics", ["metric", "last", "min", "max", "count"],
           [[k, m["last"], m["min"], m["max"], m["count"]] for k, m in info["metrics"].items()])
    _table("checkpoints", ["step", "size", "sha256 manifest", "path"],
           [[c["step"], human_size(c["size_bytes"]), "yes" if c["manifest"] else "no", c["path"]]
            for c in info["checkpoints"]])
    if info["exports"]:
        _table("compress and export steps", ["#", "kind", "name", "format", "size", "metric after", "path"],
               [[e["index"], e["kind"], e["name"], e["format"], human_size(e["size_bytes"] or 0),
                 e["metric_after"], e["path"]] for e in info["exports"]])


@runs_group.command("diff")
@click.argument("run_a", type=click.Path())
@click.argument("run_b", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def runs_diff(run_a: str, run_b: str, as_json: bool) -> None:
    """Config keys and final metric values that differ between RUN_A and RUN_B."""
    from crossframe.runs.detail import diff

    info = diff(run_a, run_b)
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
        return
    _table("config", ["key", run_a, run_b], [list(r) for r in info["config"]])
    _table("final metrics", ["metric", run_a, run_b, "b - a"],
           [[m["metric"], m["a"], m["b"], m["delta"]] for m in info["metrics"]])


COMMANDS = [runs_group]
