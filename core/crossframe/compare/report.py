"""The comparison's reports: tables for the terminal, ``report.md``, a self-contained ``report.html``
(plots embedded as base64 PNG) and ``results.json``, all written atomically.

Both documents are built from the same sections (:func:`sections`): focused tables of numerics,
speed, quality, memory, exports, the machine's load, loss-curve divergence and where the wall time
went, each a list of rows of strings, so the Markdown and the HTML say the same things.
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
    """One backend's exports in one cell (the terminal's compact summary)."""
    from crossframe.compress.report import runtime_of

    parts = []
    for e in row["export"]:
        size = fmt(e["size_bytes"] / 1024 if e["size_bytes"] is not None else None, ",.1f", " KiB")
        lat = f"{runtime_of(e['format'])} p50 {fmt(e['latency_p50_ms'], '.3g')} ms"
        bad = f" ({e['status']})" if e.get("status") not in (None, "ok") else ""
        parts.append(f"{e['format']}: {size}, {lat}{bad}")
    return "; ".join(parts) or "-"


def _main_metric(results: dict[str, Any]) -> list[str]:
    keys: list[str] = []
    for row in results["results"]:
        keys += [k for k in row["eval"] if k not in keys]
    return keys


def _unit(results: dict[str, Any]) -> tuple[str, str]:
    """The throughput key and its unit: tokens/s when any backend trained a language model."""
    lm = any(r["throughput"].get("tokens_per_sec") is not None for r in results["results"])
    return ("tokens_per_sec", "tok/s") if lm else ("samples_per_sec", "samples/s")


def summary_rows(results: dict[str, Any], compact: bool = False) -> tuple[list[str], list[list[str]]]:
    """The headline table: one row per backend, eval metrics as extra columns.

    ``compact`` (the terminal) keeps two eval metrics and drops columns no backend has a value for.
    """
    rows_in = results["results"]
    metrics = _main_metric(results)[:2] if compact else _main_metric(results)
    key, unit = _unit(results)
    columns: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("backend", lambda r: r["backend"]),
        ("status", lambda r: r["status"]),
        ("version", lambda r: r["framework_version"] or "-"),
        ("device", lambda r: r["device"] or "-"),
        ("parity max|Δ|", lambda r: fmt(r["parity"].get("max_abs_diff"), ".2e")),
        (unit, lambda r: fmt(r["throughput"].get(key), ",.0f")),
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


# ---------------------------------------------------------------------- focused tables


def numerics_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Status, framework, device and the initial parity against the numpy reference."""
    headers = ["backend", "status", "framework", "device", "steps", "parity max|Δ|", "relative", "samples"]
    rows = []
    for r in results["results"]:
        p = r["parity"]
        ref = p.get("reference_max_abs")
        rel = p["max_abs_diff"] / ref if p.get("max_abs_diff") is not None and ref else None
        rows.append([r["backend"], r["status"], r["framework_version"] or "-", r["device"] or "-",
                     fmt(r["steps"], "d"), fmt(p.get("max_abs_diff"), ".2e"), fmt(rel, ".2e"),
                     fmt(p.get("samples"), "d")])
    return headers, rows


def speed_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Steady throughput, its ratio to the fastest backend, steps/s, the first step and MFU."""
    key, unit = _unit(results)
    values = [r["throughput"].get(key) for r in results["results"]]
    fastest = max((v for v in values if v), default=None)
    headers = ["backend", unit, "vs fastest", "steps/s", "first step s", "MFU", "windows"]
    rows = []
    for r, v in zip(results["results"], values, strict=True):
        t = r["throughput"]
        rows.append([r["backend"], fmt(v, ",.0f"), fmt(v / fastest if v and fastest else None, ".3g", "x"),
                     fmt(t.get("steps_per_sec"), ",.1f"), fmt(r["first_step_s"], ".3f"),
                     fmt(100 * r["mfu"] if r["mfu"] is not None else None, ".1f", "%"),
                     str(t.get("windows", 0)) + (" (warm-up)" if t.get("includes_warmup") else "")])
    return headers, rows


def memory_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Peak host (RSS) and device memory."""
    headers = ["backend", "peak host MiB", "peak device MiB"]
    return headers, [[r["backend"], fmt(r["memory"]["peak_host_mb"], ",.0f"),
                      fmt(r["memory"]["peak_device_mb"], ",.0f")] for r in results["results"]]


def quality_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The final evaluation's metrics."""
    metrics = _main_metric(results)
    headers = ["backend", *metrics]
    return headers, [[r["backend"], *(fmt(r["eval"].get(k), ".4f") for k in metrics)] for r in results["results"]]


def export_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """One row per exported file: its size, the runtime that timed it, latency and metric."""
    from crossframe.compress.report import runtime_of

    headers = ["backend", "format", "step", "size KiB", "runtime", "p50 ms", "p99 ms", "metric", "status"]
    rows = []
    for r in results["results"]:
        for e in r["export"]:
            metric = f"{e['metric']} {e['metric_after']:.4f}" if e.get("metric_after") is not None else "-"
            status = e.get("status") or "ok"
            rows.append([r["backend"], e["format"], e.get("name") or "-",
                         fmt(e["size_bytes"] / 1024 if e["size_bytes"] is not None else None, ",.1f"),
                         runtime_of(e["format"]), fmt(e["latency_p50_ms"], ".3g"), fmt(e["latency_p99_ms"], ".3g"),
                         metric, status if not e.get("error") else f"{status}: {e['error']}"])
    return headers, rows


def load_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Each run's threads, the cores other processes kept busy meanwhile, and whether it was contended."""
    headers = ["backend", "threads", "cores", "run's CPU (cores)", "other processes (cores)", "load avg",
               "contended"]
    rows = []
    for r in results["results"]:
        load = r.get("load") or {}
        if not load:
            rows.append([r["backend"], "-", "-", "-", "-", "-", "not measured"])
            continue
        avg = f"{fmt(load.get('load_avg_start'), '.2f')} → {fmt(load.get('load_avg_end'), '.2f')}"
        flag = f"yes: {load.get('why')}" if load.get("contended") else "no"
        rows.append([r["backend"], str(load["threads"]), str(load["cores"]), fmt(load.get("child_cpu_cores"), ".2f"),
                     fmt(load.get("other_cores"), ".2f"), avg, flag])
    return headers, rows


def divergence_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Pairwise loss-curve divergence."""
    headers = ["pair", "max |Δ train loss|", "at step", "common steps"]
    rows = [[f"{p['a']} vs {p['b']}", fmt(p["max_abs_diff"], ".3e"), fmt(p["at_step"], "d"),
             str(p["common_steps"])] for p in results["loss_divergence"]]
    return headers, rows


#: the columns of the wall-time table: (timings key, header); they sum to ``child_wall_s``
WALL_COLUMNS = (("process_start_s", "process start"), ("backend_load_s", "backend load"), ("data_s", "data"),
                ("parity_s", "parity"), ("run_wall_s", "training run"), ("finish_s", "finish"))


def overhead_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Where each backend's process time went, in seconds: parts that sum to the process's wall time."""
    headers = ["backend", *(f"{label} s" for _, label in WALL_COLUMNS), "= process wall s"]
    rows = []
    for r in results["results"]:
        t = r["timings"]
        rows.append([r["backend"], *(fmt(t.get(k), ".2f") for k, _ in WALL_COLUMNS), fmt(t.get("child_wall_s"), ".2f")])
    return headers, rows


# ---------------------------------------------------------------------- sections


@dataclass
class Section:
    """One titled table of a report, with a note under it."""

    title: str
    headers: list[str]
    rows: list[list[str]]
    note: str = ""


def sections(results: dict[str, Any]) -> list[Section]:
    """The report's tables, in order (empty ones left out)."""
    o = results["overhead"]
    unit = _unit(results)[1]
    out = [
        Section("Numerics", *numerics_rows(results),
                "parity: max |predict - numpy reference| of the initial weights on real validation inputs; "
                "relative: that over max |reference|"),
        Section("Speed", *speed_rows(results),
                f"{unit}: median over the log windows after the first; vs fastest: the ratio to the fastest "
                "backend; first step: tracing + compilation + one step"),
        Section("Quality", *quality_rows(results), "the final evaluation on the validation split"),
        Section("Memory", *memory_rows(results), "peak resident set of the backend's process; device where reported"),
        Section("Export", *export_rows(results), "each file timed at batch 1 by the runtime that loads it"),
        Section("Load", *load_rows(results),
                "other processes: cores the rest of the machine kept busy during the run (/proc/stat less the "
                "run's own CPU time); contended: they took more than the cores the run left free"),
        Section("Loss-curve divergence", *divergence_rows(results), "train loss at the steps both backends logged"),
        Section("Where the time went", *overhead_rows(results),
                "each backend's process: start (interpreter and imports), backend load, data, parity check, the "
                "training run (with the config's compress and export steps), and finish (memory readings, writing its "
                "result, the interpreter's exit and framework teardown); the parts "
                f"add up to its wall time. Whole comparison {o['total_s']:.1f} s: training runs "
                f"{o['backends_s']:.1f} s, the comparison's own work {o['overhead_s']:.1f} s (data preparation "
                f"{o.get('data_prepare_s', 0.0):.2f} s in the parent, the parts above besides the runs, reports)."),
    ]
    return [s for s in out if s.rows and len(s.headers) > 1]


def _describe(results: dict[str, Any]) -> str:
    c = results["config"]
    train = c.get("train", {})
    model = c.get("model", {})
    data = c.get("data", {})
    budget = f"{train.get('steps')} steps" if train.get("steps") else f"{train.get('epochs', 1)} epoch(s)"
    return (f"model `{model.get('name')}` on `{data.get('name')}`, {budget}, batch {train.get('batch_size')}, "
            f"optimizer `{train.get('optimizer', {}).get('name')}`, precision {c.get('precision')}, "
            f"device {c.get('device')}, seed {c.get('seed')}")


def machine_line(results: dict[str, Any]) -> str:
    """crossframe and Python versions, the CPU, cores, platform and each backend's framework version."""
    m = results["machine"]
    cpu = m.get("cpu_model") or m.get("processor") or "unknown CPU"
    versions = ", ".join(f"{r['backend']} {r['framework_version']}" for r in results["results"]
                         if r.get("framework_version"))
    return (f"crossframe {results['crossframe_version']}, Python {m['python']}, {cpu}, "
            f"{m.get('cores_available')} of {m.get('cpus')} cores available, {m['platform']}"
            + (f"; {versions}" if versions else "") + f"; {results['created']}")


def threads_line(results: dict[str, Any]) -> str:
    """How many threads each backend had, and why."""
    t = results.get("threads")
    if not t:
        return "threads per backend: not recorded"
    return f"{t['per_backend']} thread(s) per backend ({t['reason']})"


def contention_lines(results: dict[str, Any]) -> list[str]:
    """One line per run measured while other processes competed for its cores (with the reason)."""
    out = []
    for r in results["results"]:
        load = r.get("load") or {}
        if load.get("contended"):
            out.append(f"{r['backend']}: contended, its speed figures are not comparable: {load.get('why')}")
    return out


# ---------------------------------------------------------------------- markdown


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(results: dict[str, Any], files: dict[str, str]) -> str:
    """``report.md``: the description, machine and threads, then every section, failures and the plots."""
    out = ["# crossframe compare", "",
           f"{_describe(results)}. Each backend ran in its own process from the same canonical initial weights "
           "and batch order.", "",
           f"Machine: {machine_line(results)}.", "", f"Threads: {threads_line(results)}.", ""]
    warnings = contention_lines(results)
    if warnings:
        out += ["**Contended runs:**", ""] + [f"- {w}" for w in warnings] + [""]
    for s in sections(results):
        out += [f"## {s.title}", "", _md_table(s.headers, s.rows), ""] + ([f"_{s.note}_", ""] if s.note else [])
    if not results["loss_divergence"]:
        out += ["## Loss-curve divergence", "", "Fewer than two backends logged a training loss.", ""]
    failures = [r for r in results["results"] if r["status"] != "ok"]
    if failures:
        out += ["## Failures", ""] + [f"- **{r['backend']}** ({r['status']}): {r['error']}" for r in failures] + [""]
    plots = [(k, v) for k, v in files.items() if v.endswith(".png")]
    if plots:
        out += ["## Plots", ""] + [f"![{k}]({v})" for k, v in plots] + [""]
    return "\n".join(out)


# ---------------------------------------------------------------------- html

_NUMBER = re.compile(r"^[-+]?[\d,]*\.?\d+(e[-+]?\d+)?\s*(%|x)?$")


def inline_html(text: str) -> str:
    """Escape ``text`` for HTML and render its Markdown inline marks: `code` and **bold**."""
    out = html.escape(str(text), quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", out)


def _cell_class(header: str, text: str) -> str:
    if header == "status":
        return "ok" if text == "ok" else "bad"
    if header == "contended":
        return "bad" if text.startswith("yes") else "ok" if text == "no" else ""
    return "num" if _NUMBER.match(text) or text == "-" else ""


def _html_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A table whose numeric columns are right-aligned and whose status cells are coloured."""
    numeric = [all(_cell_class(h, str(row[i])) == "num" for row in rows) and h != "backend"
               for i, h in enumerate(headers)]
    head = "".join(f"<th class='{'num' if numeric[i] else ''}'>{inline_html(h)}</th>" for i, h in enumerate(headers))
    body = []
    for row in rows:
        cells = []
        for i, (h, c) in enumerate(zip(headers, row, strict=True)):
            cls = "num" if numeric[i] else _cell_class(h, str(c))
            cls = "" if cls == "num" and not numeric[i] else cls
            cells.append(f"<td class='{cls}'>{inline_html(c)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


_CSS = """
:root{--fg:#1d232b;--muted:#5b6673;--line:#dfe3e8;--head:#f4f6f8;--ok:#17803d;--bad:#c0282d;--warn:#fff4e0}
*{box-sizing:border-box}
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;color:var(--fg);margin:0 auto;max-width:1200px;
padding:24px 32px;overflow-wrap:anywhere}
h1{font-size:1.7em;margin:.2em 0 .3em}h2{font-size:1.15em;margin:0 0 .4em}
p{margin:.35em 0}.muted{color:var(--muted);font-size:.88em}
code{font:.92em ui-monospace,SFMono-Regular,Menlo,monospace;background:var(--head);padding:.05em .3em;border-radius:3px}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,520px),1fr));gap:20px 28px;margin-top:18px}
section{min-width:0}section.wide{grid-column:1/-1}
table{border-collapse:collapse;width:100%;font-size:.9em;margin:.2em 0 .3em}
th,td{border-bottom:1px solid var(--line);padding:.35em .6em;text-align:left;vertical-align:top}
th{background:var(--head);font-weight:600;white-space:nowrap}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.ok{color:var(--ok);font-weight:600}td.bad{color:var(--bad);font-weight:600}
.banner{background:var(--warn);border-left:4px solid #e08a00;padding:.5em .8em;margin:.8em 0}
.failures li{color:var(--bad)}
.plots{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,520px),1fr));gap:16px}
.plots img{width:100%;height:auto;border:1px solid var(--line);border-radius:4px}
"""

#: sections wide enough to take the page's whole width
_WIDE = {"Numerics", "Speed", "Export", "Load", "Where the time went"}


def html_report(results: dict[str, Any], directory: Path, files: dict[str, str]) -> str:
    """``report.html``: everything report.md says, as focused tables, plots embedded as base64 PNG."""
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>"
             "<meta name='viewport' content='width=device-width,initial-scale=1'><title>crossframe compare</title>"
             f"<style>{_CSS}</style></head><body>",
             "<h1>crossframe compare</h1>",
             f"<p>{inline_html(_describe(results))}. Each backend ran in its own process from the same canonical "
             "initial weights and batch order.</p>",
             f"<p class='muted'><b>Machine:</b> {inline_html(machine_line(results))}</p>",
             f"<p class='muted'><b>Threads:</b> {inline_html(threads_line(results))}</p>"]
    warnings = contention_lines(results)
    if warnings:
        parts.append("<div class='banner'><b>Contended runs</b><ul>"
                     + "".join(f"<li>{inline_html(w)}</li>" for w in warnings) + "</ul></div>")
    failures = [r for r in results["results"] if r["status"] != "ok"]
    if failures:
        parts.append("<h2>Failures</h2><ul class='failures'>" + "".join(
            f"<li><b>{html.escape(r['backend'])}</b> ({html.escape(r['status'])}): "
            f"{inline_html(str(r['error']))}</li>" for r in failures) + "</ul>")
    parts.append("<div class='grid'>")
    for s in sections(results):
        cls = " class='wide'" if s.title in _WIDE else ""
        parts.append(f"<section{cls}><h2>{inline_html(s.title)}</h2>{_html_table(s.headers, s.rows)}"
                     + (f"<p class='muted'>{inline_html(s.note)}</p>" if s.note else "") + "</section>")
    parts.append("</div>")
    images = [v for v in files.values() if v.endswith(".png")]
    if images:
        parts.append("<h2 style='margin-top:20px'>Plots</h2><div class='plots'>")
        for name in images:
            data = base64.b64encode((directory / name).read_bytes()).decode("ascii")
            parts.append(f"<img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>")
        parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts)


# ---------------------------------------------------------------------- terminal


def print_table(results: dict[str, Any], console: Any = None) -> None:
    """The summary, divergence and load on the terminal (rich on a TTY or ``console``; plain text when piped)."""
    import sys

    from crossframe.tables import show_table

    def say(text: str, style: str = "") -> None:
        if console is not None:
            console.print(f"[{style}]{text}[/{style}]" if style else text, highlight=False, markup=bool(style))
        else:
            print(text, file=sys.stdout, flush=True)

    headers, rows = summary_rows(results, compact=True)
    cells = [[c if i != 1 else (c, "green" if c == "ok" else "red") for i, c in enumerate(row)] for row in rows]
    show_table("crossframe compare", headers, cells, console=console)
    if results["loss_divergence"]:
        show_table("loss-curve divergence (train loss at common logged steps)", *divergence_rows(results),
                   console=console)
    say(f"threads: {threads_line(results)}")
    for r in results["results"]:
        load = r.get("load") or {}
        if load:
            say(f"load during {r['backend']}: other processes kept {fmt(load.get('other_cores'), '.2f')} of "
                f"{load['cores']} cores busy; {r['backend']} used {fmt(load.get('child_cpu_cores'), '.2f')} "
                f"with {load['threads']} thread(s)")
    for line in contention_lines(results):
        say(f"warning: {line}", "yellow")
    for r in results["results"]:
        if r["status"] != "ok":
            say(f"{r['backend']} {r['status']}: {r['error']}", "red")
    o = results["overhead"]
    say(f"comparison overhead {o['overhead_s']:.1f} s of {o['total_s']:.1f} s (training runs {o['backends_s']:.1f} s)")


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
