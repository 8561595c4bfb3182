"""PNG plots of a comparison (matplotlib's object API on an Agg canvas, imported only when drawn).

Each function takes the ``results`` dict and a path, draws one figure and returns the path, or
``None`` when there is nothing to draw (no backend logged a loss, none has a figure). Figures are
built as :class:`matplotlib.figure.Figure` with their own Agg canvas: no ``pyplot`` state and no
change to matplotlib's global backend, so an embedding application's plotting is left alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

COLORS = {"torch": "#ee4c2c", "jax": "#5e97f6", "tensorflow": "#ff8f00"}


def new_figure(width: float, height: float, rows: int = 1, **kwargs: Any) -> tuple[Any, Any]:
    """A figure on its own Agg canvas and its axes (``rows`` stacked), without pyplot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 1, **kwargs)
    return fig, axes


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


def loss_differences(results: dict[str, Any]) -> tuple[str, dict[str, list[tuple[int, float]]]] | None:
    """Each other backend's train loss minus the first backend's, at the steps both logged.

    Returns ``(reference backend, {backend: [(step, difference), ...]})``, or ``None`` with fewer
    than two curves.
    """
    rows = [r for r in results["results"] if r["loss_curve"]]
    if len(rows) < 2:
        return None
    ref = {int(s): float(v) for s, v in rows[0]["loss_curve"]}
    out = {}
    for row in rows[1:]:
        out[row["backend"]] = [(int(s), float(v) - ref[int(s)]) for s, v in row["loss_curve"] if int(s) in ref]
    return rows[0]["backend"], out


def loss_curves(results: dict[str, Any], path: Path) -> Path | None:
    """Write :func:`loss_figure` to ``path`` (``None`` when no backend logged a loss)."""
    fig = loss_figure(results)
    return None if fig is None else _save(fig, path)


def loss_figure(results: dict[str, Any]) -> Any:
    """Train loss against step, every backend overlaid; below, each backend's difference from the first.

    Backends that agree draw one curve on top of another, so the lower panel shows what the upper
    one hides.
    """
    rows = [r for r in results["results"] if r["loss_curve"]]
    if not rows:
        return None
    diffs = loss_differences(results)
    fig, axes = new_figure(7.5, 6.2 if diffs else 4, rows=2 if diffs else 1, sharex=True,
                           **({"gridspec_kw": {"height_ratios": [3, 2]}} if diffs else {}))
    ax = axes[0] if diffs else axes
    for i, row in enumerate(rows):
        steps, losses = zip(*row["loss_curve"], strict=True)
        ax.plot(steps, losses, label=row["backend"], color=_color(row["backend"], i), linewidth=1.6,
                marker="o" if len(steps) < 30 else None, markersize=3, alpha=0.85)
    ax.set_ylabel("train loss")
    ax.set_title("Training loss (same initial weights, same batches)")
    ax.grid(alpha=0.3)
    ax.legend()
    if diffs:
        reference, curves = diffs
        low = axes[1]
        low.axhline(0.0, color=_color(reference, 0), linewidth=1.2, label=f"{reference} (reference)")
        for i, (backend, points) in enumerate(curves.items(), start=1):
            if points:
                steps, values = zip(*points, strict=True)
                low.plot(steps, values, label=backend, color=_color(backend, i), linewidth=1.4,
                         marker="o" if len(steps) < 30 else None, markersize=3)
        low.set_ylabel(f"loss - {reference}")
        low.set_title(f"Difference from {reference}", fontsize="medium")
        low.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        low.grid(alpha=0.3)
        low.legend(fontsize="small")
        low.set_xlabel("step")
    else:
        ax.set_xlabel("step")
    return fig


def throughput_bars(results: dict[str, Any], path: Path) -> Path | None:
    """Write :func:`throughput_figure` to ``path`` (``None`` when no backend has a figure)."""
    fig = throughput_figure(results)
    return None if fig is None else _save(fig, path)


def throughput_figure(results: dict[str, Any]) -> Any:
    """Steady-state throughput per backend (tokens/s for language models, else samples/s).

    Horizontal bars on a log axis, so a backend a hundred times slower still shows; each bar is
    labelled with its value and its ratio to the fastest.
    """
    tokens = any(r["throughput"].get("tokens_per_sec") for r in results["results"])
    key, unit = ("tokens_per_sec", "tokens/s") if tokens else ("samples_per_sec", "samples/s")
    rows = [(r["backend"], r["throughput"].get(key)) for r in results["results"]]
    rows = [(b, float(v)) for b, v in rows if v]
    if not rows:
        return None
    fastest = max(v for _, v in rows)
    fig, ax = new_figure(7, 0.7 + 0.55 * len(rows))
    names = [b for b, _ in rows]
    ys = list(range(len(rows)))[::-1]
    bars = ax.barh(ys, [v for _, v in rows], color=[_color(b, i) for i, b in enumerate(names)], height=0.6)
    ax.set_yticks(ys, names)
    ax.set_xscale("log")
    labels = [f"{v:,.0f}  (" + ("fastest" if v == fastest else f"{v / fastest:.3g}x the fastest") + ")"
              for _, v in rows]
    ax.bar_label(bars, labels=labels, padding=4, fontsize="small")
    low = min(v for _, v in rows)
    ax.set_xlim(low / 3, fastest * 30)
    ax.set_xlabel(f"{unit} (log scale)")
    ax.set_title(f"Training throughput ({unit}, median)")
    ax.grid(axis="x", alpha=0.3, which="both")
    return fig


def memory_bars(results: dict[str, Any], path: Path) -> Path | None:
    """Peak host memory per backend (and peak device memory where a device reported it)."""
    rows = [r for r in results["results"] if r["memory"]["peak_host_mb"] is not None]
    if not rows:
        return None
    device = any(r["memory"]["peak_device_mb"] is not None for r in rows)
    fig, ax = new_figure(6, 3.6)
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
