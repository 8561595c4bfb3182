"""PNG plots of a comparison (matplotlib, imported only when a plot is drawn).

Figures are built with ``matplotlib.figure.Figure`` rather than pyplot, so drawing them neither
switches matplotlib's global backend nor registers figures with pyplot: inline plots in a Jupyter
session that also calls ``crossframe.compare`` keep working.

Each function takes the ``results`` dict and a path, draws one figure and returns the path, or
``None`` when there is nothing to draw (no backend logged a loss, none has a figure).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

COLORS = {"torch": "#ee4c2c", "jax": "#5e97f6", "tensorflow": "#ff8f00"}


def _figure(figsize: tuple[float, float]) -> tuple[Any, Any]:
    """A standalone figure and its axes (saved through its own Agg canvas; pyplot is never touched)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots()


def _color(backend: str, i: int) -> str:
    return COLORS.get(backend, f"C{i}")


def _save(fig: Any, path: Path) -> Path:
    """Write the figure atomically (a temp file in the same directory, then a rename)."""
    import os
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def loss_curves(results: dict[str, Any], path: Path) -> Path | None:
    """Train loss against step, every backend overlaid."""
    rows = [r for r in results["results"] if r["loss_curve"]]
    if not rows:
        return None
    fig, ax = _figure((7, 4))
    for i, row in enumerate(rows):
        steps, losses = zip(*row["loss_curve"], strict=True)
        ax.plot(steps, losses, label=row["backend"], color=_color(row["backend"], i), linewidth=1.6,
                marker="o" if len(steps) < 30 else None, markersize=3, alpha=0.85)
    ax.set_xlabel("step")
    ax.set_ylabel("train loss")
    ax.set_title("Training loss (same initial weights, same batches)")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def _bars(results: dict[str, Any], path: Path, value: Any, ylabel: str, title: str) -> Path | None:
    rows = [(r["backend"], value(r)) for r in results["results"]]
    rows = [(b, v) for b, v in rows if v is not None]
    if not rows:
        return None
    fig, ax = _figure((6, 3.6))
    names = [b for b, _ in rows]
    bars = ax.bar(names, [v for _, v in rows], color=[_color(b, i) for i, b in enumerate(names)])
    ax.bar_label(bars, fmt="%.4g", padding=2)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.margins(y=0.15)
    return _save(fig, path)


def throughput_bars(results: dict[str, Any], path: Path) -> Path | None:
    """Steady-state throughput per backend (tokens/s for language models, else samples/s)."""
    tokens = any(r["throughput"].get("tokens_per_sec") for r in results["results"])
    key, unit = ("tokens_per_sec", "tokens/s") if tokens else ("samples_per_sec", "samples/s")
    return _bars(results, path, lambda r: r["throughput"].get(key), unit, f"Training throughput ({unit}, median)")


def memory_bars(results: dict[str, Any], path: Path) -> Path | None:
    """Peak host memory per backend (and peak device memory where a device reported it)."""
    rows = [r for r in results["results"] if r["memory"]["peak_host_mb"] is not None]
    if not rows:
        return None
    device = any(r["memory"]["peak_device_mb"] is not None for r in rows)
    fig, ax = _figure((6, 3.6))
    names = [r["backend"] for r in rows]
    width = 0.4 if device else 0.6
    xs = list(range(len(rows)))
    host = ax.bar([x - width / 2 * device for x in xs], [r["memory"]["peak_host_mb"] for r in rows], width,
                  label="peak host (RSS)", color=[_color(n, i) for i, n in enumerate(names)])
    ax.bar_label(host, fmt="%.0f", padding=2)
    if device:
        dev = ax.bar([x + width / 2 for x in xs], [r["memory"]["peak_device_mb"] or 0.0 for r in rows], width,
                     label="peak device", color="#777777")
        ax.bar_label(dev, fmt="%.0f", padding=2)
        ax.legend()
    ax.set_xticks(xs, names)
    ax.set_ylabel("MiB")
    ax.set_title("Peak memory")
    ax.grid(axis="y", alpha=0.3)
    ax.margins(y=0.15)
    return _save(fig, path)


PLOTS = {"loss_png": ("loss.png", loss_curves), "throughput_png": ("throughput.png", throughput_bars),
         "memory_png": ("memory.png", memory_bars)}


def draw_all(results: dict[str, Any], directory: Path) -> dict[str, Path]:
    """Every plot that has data, under ``directory``; ``{key: path}``."""
    out = {}
    for key, (filename, draw) in PLOTS.items():
        path = draw(results, directory / filename)
        if path is not None:
            out[key] = path
    return out
