"""``crossframe explain RUN_DIR --method permutation|integrated-gradients|saliency|attention``."""

from __future__ import annotations

import json

import click


@click.command("explain")
@click.argument("run_dir", type=click.Path())
@click.option("--method", "-m", default="permutation", show_default=True,
              type=click.Choice(["permutation", "integrated-gradients", "saliency", "attention"]))
@click.option("--backend", "-b", help="Explain on this backend instead of the run's own.")
@click.option("--samples", default=256, show_default=True, type=int, help="Validation examples used.")
@click.option("--steps", default=64, show_default=True, type=int, help="Integrated gradients: quadrature steps.")
@click.option("--repeats", default=5, show_default=True, type=int, help="Permutation: shuffles per feature.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Report directory (default RUN_DIR/explain).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a value (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def explain_command(run_dir: str, method: str, backend: str | None, samples: int, steps: int, repeats: int,
                    out_dir: str | None, overrides: tuple[str, ...], as_json: bool) -> None:
    """Explain RUN_DIR's latest checkpoint: a PNG and an HTML report (and JSON) of feature attributions."""
    from crossframe.explain.api import explain
    from crossframe.registry.uri import resolve_run_path

    summary = explain(resolve_run_path(run_dir), method, overrides=overrides, backend=backend, samples=samples,
                      steps=steps, repeats=repeats, out_dir=out_dir)
    if as_json:
        click.echo(json.dumps(summary))
        return
    extra = (f"  completeness gap {summary['completeness_gap_max']:.2e} ({summary['steps']} steps)"
             if "completeness_gap_max" in summary else "")
    if method == "attention":
        click.echo(f"attention (step {summary['step']}): {summary['layers']} layers x {summary['heads']} heads "
                   f"over {summary['sequences']} sequences of {summary['seq_len']} tokens")
    else:
        click.echo(f"{method} on {summary['backend']} (step {summary['step']}): top features "
                   f"{summary['top_features']}{extra}")
    click.echo(f"report: {summary['files']['html']}")


COMMANDS = [explain_command]
