"""``crossframe model show CONFIG``: the layer table of a config's model, without importing a framework."""

from __future__ import annotations

import json

import click


@click.group("model")
def model_group() -> None:
    """Inspect models: the layer table, shapes, parameter counts and FLOPs."""


@model_group.command("show")
@click.argument("config", required=False)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config value (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def show_command(config: str | None, overrides: tuple[str, ...], as_json: bool) -> None:
    """Print CONFIG's model (a file or a built-in preset): each layer's name, kind, output shape per example,
    parameter count and forward FLOPs per example (Keras-summary style). Reads the dataset's shapes; trains nothing."""
    from crossframe.config.loading import load_config
    from crossframe.models import build_model
    from crossframe.train.data import load_training_data

    cfg = load_config(config, overrides)
    info = load_training_data(cfg).info
    spec = build_model(cfg.model.name, cfg.model.params, info)
    graph = spec.graph
    if graph is not None:
        rows = [{"name": n, "kind": k, "output": o, "params": p, "flops": f} for n, k, o, p, f in graph.summary_rows()]
        flops = graph.flops
    else:  # a hand-written model: its parameters, one row each
        rows = [{"name": p.name, "kind": p.layout, "output": str(p.shape), "params": int(_size(p.shape)),
                 "flops": None} for p in spec.table]
        flops = None
    total = {"model": spec.name, "input": list(info.input_shape), "params": spec.param_count, "flops": flops}
    if as_json:
        click.echo(json.dumps({**total, "layers": rows}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"model '{spec.name}' on inputs {tuple(info.input_shape)}")
    for column in ("name", "kind", "output", "params", "FLOPs / example"):
        table.add_column(column, justify="right" if column in ("params", "FLOPs / example") else "left")
    for row in rows:
        table.add_row(row["name"], row["kind"], row["output"], f"{row['params']:,}",
                      "" if row["flops"] is None else f"{row['flops']:,}")
    Console().print(table)
    click.echo(f"total: {spec.param_count:,} parameters" + ("" if flops is None else f", {flops:,} FLOPs per example"))


def _size(shape: tuple[int, ...]) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


COMMANDS = [model_group]
