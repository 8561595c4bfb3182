"""What a study leaves behind: ``best_config.yaml`` (a config ``crossframe run`` accepts), a table of
trials, parameter importances, PNG plots from Optuna's matplotlib visualisations, ``results.json``
and a self-contained ``report.html`` (plots embedded), all written atomically.

Plots render on matplotlib's Agg canvas attached to each figure explicitly; the process's
matplotlib backend is never switched.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from crossframe.config.loading import atomic_write_bytes, atomic_write_text, dump_yaml, load_config
from crossframe.tune.plan import Plan, shown_url
from crossframe.tune.progress import best_of, format_value
from crossframe.tune.space import decode, with_values

BEST_CONFIG = "best_config.yaml"
PLOTS_DIR = "plots"


def trial_rows(study: Any, plan: Plan) -> list[dict[str, Any]]:
    """One plain dict per trial: number, state, value, params (config types), steps, seconds, run_dir, error."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        rows.append({
            "number": t.number, "state": t.state.name.lower(), "value": t.value,
            "params": {k: decode(k, v, plan.tune.space) for k, v in t.params.items()},
            "steps": attrs.get("steps"), "seconds": attrs.get("seconds"), "pruned_at": attrs.get("pruned_at"),
            "run_dir": attrs.get("run_dir"), "error": attrs.get("error"), "retry_of": attrs.get("retry_of"),
            "pid": attrs.get("pid"), "host": attrs.get("host"), "threads": attrs.get("threads"),
            "intermediate": {str(k): v for k, v in sorted(t.intermediate_values.items())},
        })
    return rows


def best_config(plan: Plan, params: dict[str, Any]) -> str:
    """The run config of the best trial as YAML: the base config with ``params``, validated."""
    data = with_values(plan.base, params)
    data["name"] = f"{plan.name}-best"
    return dump_yaml(load_config(data))


def importances(study: Any) -> dict[str, float]:
    """Optuna's parameter importances (fANOVA), or nothing when there are too few complete trials."""
    import optuna

    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if len(complete) < 2:
        return {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}
    except (RuntimeError, ValueError):  # e.g. every complete trial drew the same values
        return {}


def _figure_png(drawn: Any) -> bytes:
    """The figure of an Axes (or array of Axes) as PNG bytes, rendered on an explicit Agg canvas."""
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    axes = drawn.flat[0] if isinstance(drawn, np.ndarray) else drawn
    fig = axes.figure
    try:
        FigureCanvasAgg(fig)  # attaches itself as fig.canvas
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
        return buffer.getvalue()
    finally:
        plt.close(fig)


def plots(study: Any, out: Path, with_importances: bool) -> dict[str, Path]:
    """Optimisation history, importances, intermediate values and slices as PNGs in ``out``."""
    from optuna.visualization import matplotlib as vis

    complete = sum(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False))
    wanted: dict[str, Callable[[Any], Any]] = {}
    if complete:
        wanted["history"] = vis.plot_optimization_history
        wanted["slice"] = vis.plot_slice
    if with_importances:
        wanted["importances"] = vis.plot_param_importances
    if any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        wanted["intermediate"] = vis.plot_intermediate_values
    written = {}
    for name, draw in wanted.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
            png = _figure_png(draw(study))
        path = out / f"{name}.png"
        atomic_write_bytes(path, png)
        written[name] = path
    return written


def print_table(rows: list[dict[str, Any]], metric: str, best: int | None) -> None:
    """The trials as a rich table on stdout; the best trial in bold."""
    from rich.console import Console
    from rich.table import Table

    keys = list(dict.fromkeys(k for r in rows for k in r["params"]))
    table = Table(title="crossframe tune: trials")
    for column in ("#", "state", metric, *[k.rsplit(".", 1)[-1] for k in keys], "steps", "s"):
        table.add_column(column, overflow="fold")
    for r in rows:
        state = r["state"] + (f" @{r['pruned_at']}" if r["pruned_at"] is not None else "")
        cells = [str(r["number"]), state, "-" if r["value"] is None else f"{r['value']:.4f}",
                 *[format_value(r["params"].get(k, "-")) for k in keys],
                 str(r["steps"] or "-"), "-" if r["seconds"] is None else f"{r['seconds']:.1f}"]
        table.add_row(*cells, style="bold" if r["number"] == best else None)
    Console().print(table)


def _html(summary: dict[str, Any], rows: list[dict[str, Any]], pngs: dict[str, Path]) -> str:
    esc = html.escape
    best = summary["best"]
    head = (f"<h1>crossframe tune: {esc(summary['study'])}</h1><p>{esc(summary['metric'])} "
            f"({esc(summary['direction'])}), sampler {esc(summary['sampler'])}, pruner {esc(summary['pruner'])}; "
            f"{summary['counts']['complete']} complete, {summary['counts']['pruned']} pruned, "
            f"{summary['counts']['failed']} failed; {summary['total_steps']} training steps in all.</p>")
    if best:
        params = "".join(f"<li><code>{esc(k)}</code> = {esc(json.dumps(v))}</li>" for k, v in best["params"].items())
        head += (f"<h2>Best: trial {best['number']}, {esc(summary['metric'])} {best['value']:.6g}</h2>"
                 f"<ul>{params}</ul><p>config: <code>{esc(summary['best_config'] or '')}</code></p>")
    if summary["importances"]:
        items = "".join(f"<tr><td><code>{esc(k)}</code></td><td>{v:.3f}</td></tr>"
                        for k, v in summary["importances"].items())
        head += f"<h2>Parameter importances</h2><table><tr><th>param</th><th>importance</th></tr>{items}</table>"
    keys = list(dict.fromkeys(k for r in rows for k in r["params"]))
    header = "".join(f"<th>{esc(h)}</th>" for h in ("#", "state", summary["metric"], *keys, "steps", "seconds"))
    body = ""
    for r in rows:
        value = "-" if r["value"] is None else f"{r['value']:.6g}"
        cells = [str(r["number"]), r["state"] + (f" at {r['pruned_at']}" if r["pruned_at"] is not None else ""),
                 value, *[json.dumps(r["params"].get(k)) for k in keys], str(r["steps"] or "-"),
                 "-" if r["seconds"] is None else f"{r['seconds']:.1f}"]
        body += "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>"
    figures = "".join(f"<h2>{esc(name)}</h2><img alt='{esc(name)}' src='data:image/png;base64,"
                      f"{base64.b64encode(path.read_bytes()).decode()}'>" for name, path in pngs.items())
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>crossframe tune: {esc(summary['study'])}"
            f"</title><style>{style}</style></head><body>{head}<h2>Trials</h2><table><tr>{header}</tr>{body}"
            f"</table>{figures}</body></html>\n")


def write_report(plan: Plan, study: Any, summary_extra: dict[str, Any]) -> dict[str, Any]:
    """Write best_config.yaml, results.json, plots/*.png and report.html; returns the summary."""
    rows = trial_rows(study, plan)
    best_trial = best_of(study)
    best = None
    best_path = None
    if best_trial is not None:
        params = {k: decode(k, v, plan.tune.space) for k, v in best_trial.params.items()}
        best = {"number": best_trial.number, "value": best_trial.value, "params": params,
                "run_dir": best_trial.user_attrs.get("run_dir")}
        best_path = plan.study_dir / BEST_CONFIG
        atomic_write_text(best_path, best_config(plan, params))
    found = importances(study)
    pngs = plots(study, plan.study_dir / PLOTS_DIR, bool(found))
    states = [r["state"] for r in rows]
    summary = {
        "study": plan.name, "study_dir": str(plan.study_dir), "storage": shown_url(plan.storage),
        "metric": plan.tune.metric, "direction": plan.tune.resolved_direction(),
        "sampler": plan.tune.sampler, "pruner": plan.tune.pruner, "trials_wanted": plan.tune.trials,
        "counts": {s: states.count(s) for s in ("complete", "pruned", "fail", "running", "waiting")},
        "total_steps": sum(r["steps"] or 0 for r in rows),
        "best": best, "best_config": str(best_path) if best_path else None, "importances": found,
        "plots": {k: str(v) for k, v in pngs.items()}, **summary_extra,
    }
    summary["counts"]["failed"] = summary["counts"].pop("fail")
    atomic_write_text(plan.study_dir / "results.json",
                      json.dumps({**summary, "trials": rows}, indent=2, default=_json_default) + "\n")
    atomic_write_text(plan.study_dir / "report.html", _html(summary, rows, pngs))
    summary["rows"] = rows
    return summary


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)
