"""The comparison's reports: a rich table for the terminal, ``report.md``, a self-contained
``report.html`` (plots embedded as base64 PNG) and ``results.json``, all written atomically."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from crossframe.config.loading import atomic_write_text

# ---------------------------------------------------------------------- formatting


def fmt(value: Any, spec: str = ".4g", suffix: str = "") -> str:
    """A number formatted with ``spec`` (and ``suffix``), or ``-`` for a missing one."""
    if value is None:
        return "-"
    return f"{value:{spec}}{suffix}"


def _export(row: dict[str, Any]) -> str:
    parts = []
    for e in row["export"]:
        size = fmt(e["size_bytes"] / 1024 if e["size_bytes"] is not None else None, ",.1f", " KiB")
        lat = f"p50 {fmt(e['latency_p50_ms'], '.3g')} / p99 {fmt(e['latency_p99_ms'], '.3g')} ms"
        bad = f" ({e['status']})" if e.get("status") not in (None, "ok") else ""
        metric = f", {e['metric']} {e['metric_after']:.4g}" if e.get("metric_after") is not None else ""
        parts.append(f"{e['format']}: {size}, {lat}{metric}{bad}")
    return "; ".join(parts) or "-"


def _main_metric(results: dict[str, Any]) -> list[str]:
    keys: list[str] = []
    for row in results["results"]:
        keys += [k for k in row["eval"] if k not in keys]
    return keys


def summary_rows(results: dict[str, Any], compact: bool = False) -> tuple[list[str], list[list[str]]]:
    """The headline table: one row per backend, eval metrics as extra columns.

    ``compact`` (the terminal) keeps two eval metrics and drops columns no backend has a value for.
    """
    rows_in = results["results"]
    metrics = _main_metric(results)[:2] if compact else _main_metric(results)
    lm = any(r["throughput"].get("tokens_per_sec") is not None for r in rows_in)
    unit = "tok/s" if lm else "samples/s"
    columns: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("backend", lambda r: r["backend"]),
        ("status", lambda r: r["status"]),
        ("version", lambda r: r["framework_version"] or "-"),
        ("device", lambda r: r["device"] or "-"),
        ("parity max|Δ|", lambda r: fmt(r["parity"].get("max_abs_diff"), ".2e")),
        (unit, lambda r: fmt(r["throughput"].get("tokens_per_sec" if lm else "samples_per_sec"), ",.0f")),
        ("first step s", lambda r: fmt(r["first_step_s"], ".3f")),
        ("peak host MiB", lambda r: fmt(r["memory"]["peak_host_mb"], ",.0f")),
        ("peak device MiB", lambda r: fmt(r["memory"]["peak_device_mb"], ",.0f")),
        ("MFU", lambda r: fmt(100 * r["mfu"] if r["mfu"] is not None else None, ".1f", "%")),
        *[(k, lambda r, k=k: fmt(r["eval"].get(k), ".4f")) for k in metrics],
        ("export", _export),
    ]
    table = [[fn(r) for _, fn in columns] for r in rows_in]
    keep = [i for i, (name, _) in enumerate(columns)
            if not compact or i < 3 or any(row[i] != "-" for row in table)]
    if compact and "device" in [columns[i][0] for i in keep]:
        keep.remove(3)
    return [columns[i][0] for i in keep], [[row[i] for i in keep] for row in table]


def divergence_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Pairwise loss-curve divergence."""
    headers = ["pair", "max |Δ train loss|", "at step", "common steps"]
    rows = [[f"{p['a']} vs {p['b']}", fmt(p["max_abs_diff"], ".3e"), fmt(p["at_step"], "d"),
             str(p["common_steps"])] for p in results["loss_divergence"]]
    return headers, rows


def overhead_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Where the comparison's own time went (outside the backends' training runs)."""
    headers = ["backend", "run wall s", "process start s", "backend load s", "data s", "parity s",
               "overhead s"]
    rows = []
    for r in results["results"]:
        t = r["timings"]
        rows.append([r["backend"], fmt(t.get("run_wall_s"), ".2f"), fmt(t.get("process_start_s"), ".2f"),
                     fmt(t.get("backend_load_s"), ".2f"), fmt(t.get("data_s"), ".2f"), fmt(t.get("parity_s"), ".2f"),
                     fmt(results["overhead"]["per_backend"].get(r["backend"]), ".2f")])
    return headers, rows


# ---------------------------------------------------------------------- markdown


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _describe(results: dict[str, Any]) -> str:
    c = results["config"]
    train = c.get("train", {})
    model = c.get("model", {})
    data = c.get("data", {})
    budget = f"{train.get('steps')} steps" if train.get("steps") else f"{train.get('epochs', 1)} epoch(s)"
    return (f"model `{model.get('name')}` on `{data.get('name')}`, {budget}, batch {train.get('batch_size')}, "
            f"optimizer `{train.get('optimizer', {}).get('name')}`, precision {c.get('precision')}, "
            f"device {c.get('device')}, seed {c.get('seed')}")


def markdown(results: dict[str, Any], files: dict[str, str]) -> str:
    """``report.md``: summary, divergence, overhead, failures and the plots (linked)."""
    m = results["machine"]
    o = results["overhead"]
    out = [
        "# crossframe compare", "",
        f"{_describe(results)}. Each backend ran in its own process from the same canonical initial weights "
        f"and batch order. crossframe {results['crossframe_version']}, Python {m['python']}, "
        f"{m['cores_available']} core(s), {m['platform']}, {results['created']}.", "",
        "## Summary", "", _md_table(*summary_rows(results)), "",
        "- parity: max |predict - numpy reference| of the initial weights on real validation inputs",
        "- throughput: median over the log windows after the first; first step: tracing + compilation + one step",
        "", "## Loss-curve divergence", "",
    ]
    if results["loss_divergence"]:
        out += [_md_table(*divergence_rows(results)), ""]
    else:
        out += ["Fewer than two backends logged a training loss.", ""]
    failures = [r for r in results["results"] if r["status"] != "ok"]
    if failures:
        out += ["## Failures", ""] + [f"- **{r['backend']}** ({r['status']}): {r['error']}" for r in failures] + [""]
    out += ["## Comparison overhead", "",
            f"Total {o['total_s']:.1f} s, of which the backends' training runs took {o['backends_s']:.1f} s and "
            f"the comparison itself {o['overhead_s']:.1f} s (subprocess start, imports, data preparation "
            f"{o.get('data_prepare_s', 0.0):.2f} s in the parent, parity checks, reports).", "",
            _md_table(*overhead_rows(results)), ""]
    plots = [(k, v) for k, v in files.items() if v.endswith(".png")]
    if plots:
        out += ["## Plots", ""] + [f"![{k}]({v})" for k, v in plots] + [""]
    return "\n".join(out)


# ---------------------------------------------------------------------- html


def _html_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.3em .6em;
text-align:left}th{background:#f3f3f3}td:nth-child(n+5){font-variant-numeric:tabular-nums}
.bad{color:#b00}img{max-width:100%;margin:.5em 1em .5em 0}"""


def html_report(results: dict[str, Any], directory: Path, files: dict[str, str]) -> str:
    """``report.html``: the same content as the Markdown, one file, plots embedded as base64 PNG."""
    o = results["overhead"]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>crossframe compare</title>"
             f"<style>{_CSS}</style></head><body>",
             "<h1>crossframe compare</h1>", f"<p>{html.escape(_describe(results))}</p>",
             "<h2>Summary</h2>", _html_table(*summary_rows(results)),
             "<h2>Loss-curve divergence</h2>", _html_table(*divergence_rows(results))]
    failures = [r for r in results["results"] if r["status"] != "ok"]
    if failures:
        parts.append("<h2>Failures</h2><ul>" + "".join(
            f"<li class='bad'><b>{html.escape(r['backend'])}</b> ({html.escape(r['status'])}): "
            f"{html.escape(str(r['error']))}</li>" for r in failures) + "</ul>")
    parts += ["<h2>Comparison overhead</h2>",
              f"<p>Total {o['total_s']:.1f} s; training runs {o['backends_s']:.1f} s; "
              f"comparison overhead {o['overhead_s']:.1f} s.</p>", _html_table(*overhead_rows(results))]
    images = [v for v in files.values() if v.endswith(".png")]
    if images:
        parts.append("<h2>Plots</h2>")
        for name in images:
            data = base64.b64encode((directory / name).read_bytes()).decode("ascii")
            parts.append(f"<img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


# ---------------------------------------------------------------------- terminal


def print_table(results: dict[str, Any], console: Any = None) -> None:
    """The summary and divergence tables with rich (on ``console``, default stdout)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    headers, rows = summary_rows(results, compact=True)
    table = Table(title="crossframe compare")
    for h in headers:
        table.add_column(h, overflow="fold")
    for row in rows:
        style = "green" if row[1] == "ok" else "red"
        table.add_row(row[0], f"[{style}]{row[1]}[/{style}]", *row[2:])
    console.print(table)
    if results["loss_divergence"]:
        headers, rows = divergence_rows(results)
        div = Table(title="loss-curve divergence (train loss at common logged steps)")
        for h in headers:
            div.add_column(h)
        for row in rows:
            div.add_row(*row)
        console.print(div)
    for r in results["results"]:
        if r["status"] != "ok":
            console.print(f"[red]{r['backend']}[/red] {r['status']}: {r['error']}", highlight=False)
    o = results["overhead"]
    console.print(f"comparison overhead {o['overhead_s']:.1f} s of {o['total_s']:.1f} s "
                  f"(training runs {o['backends_s']:.1f} s)", highlight=False)


# ---------------------------------------------------------------------- writing


def write_reports(results: dict[str, Any], directory: Path, finalize: Callable[[], None] | None = None
                  ) -> dict[str, str]:
    """Draw the plots, then (after ``finalize``) validate and write results.json, report.md, report.html.

    Sets and returns ``results["files"]``: file names relative to ``directory``.
    """
    from crossframe.compare.plots import draw_all
    from crossframe.compare.schema import validate_results

    directory.mkdir(parents=True, exist_ok=True)
    files = {key: path.name for key, path in draw_all(results, directory).items()}
    files.update(results_json="results.json", report_md="report.md", report_html="report.html")
    results["files"] = files
    if finalize is not None:
        finalize()
    validate_results(results)
    atomic_write_text(directory / "report.md", markdown(results, files))
    atomic_write_text(directory / "report.html", html_report(results, directory, files))
    atomic_write_text(directory / "results.json", json.dumps(results, indent=2) + "\n")
    return files
