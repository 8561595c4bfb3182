"""The compare reports, from one real small comparison (digits MLP, a few steps, torch and jax):
the wall-time table adds up, report.md and report.html carry the machine, threads and load, the
plots show what overlaid curves hide, and the HTML lays out within 1280 px in a real headless
Chromium."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossframe.compare.api import WALL_PARTS, wall_parts
from crossframe.compare.report import html_report, markdown, overhead_rows, print_table, sections
from crossframe.compare.schema import validate_results

pytest.importorskip("torch")
pytest.importorskip("jax")

BACKENDS = ["torch", "jax"]
TINY = {
    "name": "report-tiny", "seed": 0, "device": "cpu", "precision": "fp32",
    "data": {"name": "digits", "val_fraction": 0.2}, "model": {"name": "mlp", "hidden": [16]},
    "train": {"steps": 10, "batch_size": 32, "log_every": 2, "eval_every": 0, "checkpoint_every": 0,
              "optimizer": {"name": "adamw", "lr": 0.003}},
}
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,900"]


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One real comparison on torch and jax."""
    import crossframe

    out = tmp_path_factory.mktemp("report")
    results = crossframe.compare(TINY, backends=BACKENDS, out=out)
    return {"results": results, "dir": out / "compare"}


def _ok(results: dict[str, Any]) -> None:
    bad = [(r["backend"], r["error"]) for r in results["results"] if r["status"] != "ok"]
    assert not bad, bad


@pytest.mark.slow
def test_each_process_wall_time_is_the_sum_of_its_parts(compared: dict[str, Any]) -> None:
    results = compared["results"]
    _ok(results)
    for row in results["results"]:
        t = row["timings"]
        assert all(t[k] >= 0 for k in WALL_PARTS), t
        assert sum(t[k] for k in WALL_PARTS) == pytest.approx(t["child_wall_s"], rel=1e-12, abs=1e-12)
        assert t["run_wall_s"] > 0 and t["backend_load_s"] > 0
    headers, rows = overhead_rows(results)
    assert headers[-1].startswith("=") and len(headers) == len(WALL_PARTS) + 2
    for row in rows:  # the printed columns add up too, within their rounding (0.005 s each)
        parts = [float(c) for c in row[1:-1]]
        assert abs(sum(parts) - float(row[-1])) <= 0.005 * (len(parts) + 1) + 1e-9


@given(st.dictionaries(st.sampled_from(WALL_PARTS[:-1]), st.floats(0, 100)), st.floats(0, 500))
def test_wall_parts_sum_to_the_wall_whenever_they_can(parts: dict[str, float], wall: float) -> None:
    got = wall_parts(parts, wall)
    assert all(got[k] >= 0 for k in WALL_PARTS if k in got)
    measured_after_start = sum(v for k, v in parts.items() if k != "process_start_s")
    if wall >= measured_after_start:  # the only part measured across processes absorbs clock skew
        assert sum(got.get(k, 0.0) for k in WALL_PARTS) == pytest.approx(wall, abs=1e-9)
    assert got["child_wall_s"] == wall


@pytest.mark.slow
def test_machine_threads_and_load_in_both_reports(compared: dict[str, Any]) -> None:
    results, directory = compared["results"], compared["dir"]
    md = (directory / "report.md").read_text()
    page = (directory / "report.html").read_text()
    m = results["machine"]
    for text in (md, page):
        assert m["cpu_model"] and m["cpu_model"] in text
        assert f"Python {m['python']}" in text and f"crossframe {results['crossframe_version']}" in text
        for row in results["results"]:
            assert f"{row['backend']} {row['framework_version']}" in text
        assert results["threads"]["reason"] in text
        assert "Load" in text and "other processes" in text
    for section in sections(results):  # the HTML has every table the Markdown has
        assert f"## {section.title}" in md and f"<h2>{section.title}</h2>" in page
    assert "`" not in re.sub(r"<[^>]+>", "", page) and "<code>mlp</code>" in page


@pytest.mark.slow
def test_a_contended_run_is_flagged_with_its_reason(compared: dict[str, Any], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    results = copy.deepcopy(compared["results"])
    why = "other processes kept 1.70 of 2 cores busy during this run, more than the 1 it left free"
    results["results"][0]["load"].update(contended=True, why=why, other_cores=1.7)
    results["contended"] = [results["results"][0]["backend"]]
    validate_results(results)
    name = results["results"][0]["backend"]
    assert why in markdown(results, {}) and why in html_report(results, tmp_path, {})
    print_table(results)
    out = capsys.readouterr().out
    assert f"warning: {name}: contended" in out and why in out
    assert "load during jax: other processes kept" in out


@pytest.mark.slow
def test_loss_plot_shows_each_backend_minus_the_first(compared: dict[str, Any]) -> None:
    from crossframe.compare.plots import loss_figure

    results = compared["results"]
    fig = loss_figure(results)
    upper, lower = fig.axes[:2]
    assert len(upper.get_lines()) == len(BACKENDS)
    ref = dict(results["results"][0]["loss_curve"])
    other = results["results"][1]
    (line,) = [ln for ln in lower.get_lines() if ln.get_label() == other["backend"]]
    want = [v - ref[s] for s, v in other["loss_curve"]]
    assert list(line.get_ydata()) == want  # exact: the same float subtraction


@pytest.mark.slow
def test_throughput_plot_is_log_scale_with_values_and_ratios(compared: dict[str, Any]) -> None:
    from crossframe.compare.plots import throughput_figure

    results = copy.deepcopy(compared["results"])
    results["results"][0]["throughput"]["samples_per_sec"] = 1_000.0  # a hundredfold gap stays visible
    results["results"][1]["throughput"]["samples_per_sec"] = 100_000.0
    (ax,) = throughput_figure(results).axes
    assert ax.get_xscale() == "log"
    labels = [t.get_text() for t in ax.texts]
    assert "1,000  (0.01x the fastest)" in labels and "100,000  (fastest)" in labels


@pytest.mark.slow
def test_plots_leave_matplotlib_global_state_alone(compared: dict[str, Any], tmp_path: Path) -> None:
    code = (
        "import json, sys, matplotlib\n"
        "matplotlib.use('svg')\n"
        "from pathlib import Path\n"
        "from crossframe.compare.plots import draw_all\n"
        f"results = json.loads(Path({str(compared['dir'] / 'results.json')!r}).read_text())\n"
        f"made = draw_all(results, Path({str(tmp_path)!r}))\n"
        "assert len(made) == 3, made\n"
        "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MPLBACKEND": ""})
    assert done.returncode == 0, done.stderr[-2000:]


# ---------------------------------------------------------------------- a real browser

PROBE = """<script>
window.addEventListener("load", () => {
  const w = window.innerWidth;
  const wide = [...document.querySelectorAll("body *")].filter(e => e.getBoundingClientRect().right > w + 0.5)
    .map(e => e.tagName + (e.textContent || "").slice(0, 40));
  const tables = [...document.querySelectorAll("table")].filter(t => t.scrollWidth > t.parentElement.clientWidth)
    .map(t => t.previousElementSibling ? t.previousElementSibling.textContent : "?");
  const images = [...document.images].filter(i => !i.complete || i.naturalWidth === 0).length;
  const out = document.createElement("pre");
  out.id = "cf-layout";
  out.textContent = JSON.stringify({scroll: document.documentElement.scrollWidth, inner: w, wide, tables, images,
                                    sections: document.querySelectorAll("section").length});
  document.body.appendChild(out);
});
</script>"""


def chromium() -> str | None:
    """The Chromium binary, where one is installed."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def render_layout(page: Path) -> dict[str, Any]:
    """Open ``page`` at 1280x900 in headless Chromium and read back the layout the probe records."""
    binary = chromium()
    if binary is None:
        pytest.skip("no chromium binary on PATH (.ci/run installs Debian's chromium)")
    probe = page.with_name("probe.html")
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom",
                               probe.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="cf-layout">(.*?)</pre>', done.stdout, re.S)
    assert found, f"chromium exited {done.returncode}: {done.stderr[-1500:]}"
    import html

    return json.loads(html.unescape(found.group(1)))


@pytest.mark.slow
def test_html_report_fits_1280px_in_headless_chromium(compared: dict[str, Any], tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    shutil.copy(compared["dir"] / "report.html", page)
    layout = render_layout(page)
    assert layout["scroll"] <= layout["inner"], layout
    assert layout["wide"] == [] and layout["tables"] == [], layout
    assert layout["images"] == 0 and layout["sections"] >= 6, layout


@pytest.mark.slow
def test_wide_cells_still_fit_1280px(compared: dict[str, Any], tmp_path: Path) -> None:
    """Long errors, names and reasons wrap inside their tables instead of widening the page."""
    results = copy.deepcopy(compared["results"])
    results["results"][0]["load"].update(contended=True, why="x" * 400)
    results["results"][1].update(status="failed", error="E" * 300)
    results["results"][1]["export"] = [{"format": "onnx-int8-static-with-a-very-long-name" * 3, "name": "n" * 80,
                                        "metric": "accuracy", "metric_after": 0.5, "size_bytes": 10 ** 9,
                                        "latency_p50_ms": 1.0, "latency_p99_ms": 2.0, "status": "failed",
                                        "error": "y" * 300}]
    validate_results(results)
    page = tmp_path / "report.html"
    page.write_text(html_report(results, compared["dir"], results["files"]))
    layout = render_layout(page)
    assert layout["scroll"] <= layout["inner"] and layout["wide"] == [] and layout["tables"] == [], layout
