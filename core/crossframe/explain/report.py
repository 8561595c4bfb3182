"""The report of ``crossframe explain``: one PNG, one self-contained HTML page (the PNG inlined) and JSON.

Figures use matplotlib's object API on their own Agg canvas (no pyplot state); every file is
written atomically.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from crossframe.files import atomic_write_bytes, atomic_write_text


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _as_map(values: np.ndarray) -> np.ndarray | None:
    """An image-shaped ``[H, W, C]`` array as an ``[H, W]`` map (summed over channels); None otherwise."""
    return values.sum(axis=-1) if values.ndim == 3 else None


def draw(method: str, per_feature: np.ndarray, examples: np.ndarray | None, title: str) -> bytes:
    """PNG bytes: a heat map (images) or the top features as bars, plus per-example maps when given."""
    image = _as_map(per_feature)
    n_examples = 0 if examples is None or image is None else min(len(examples), 6)
    fig = _figure(3.2 * (1 + n_examples), 3.4)
    axes = fig.subplots(1, 1 + n_examples, squeeze=False)[0]
    if image is not None:
        shown = axes[0].imshow(image, cmap="viridis")
        fig.colorbar(shown, ax=axes[0], fraction=0.046)
        axes[0].set_title(f"{method}: mean", fontsize=9)
        axes[0].axis("off")
        for i in range(n_examples):
            assert examples is not None
            m = _as_map(examples[i])
            limit = float(np.max(np.abs(m))) or 1.0
            axes[i + 1].imshow(m, cmap="RdBu_r", vmin=-limit, vmax=limit)
            axes[i + 1].set_title(f"example {i}", fontsize=9)
            axes[i + 1].axis("off")
    else:
        flat = per_feature.reshape(-1)
        top = np.argsort(-flat)[:20][::-1]
        axes[0].barh([str(int(j)) for j in top], flat[top], color="#4c72b0")
        axes[0].set_xlabel("importance")
        axes[0].set_ylabel("feature")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def write_report(out_dir: Path, method: str, per_feature: np.ndarray, summary: dict[str, Any],
                 examples: np.ndarray | None = None) -> dict[str, Path]:
    """Write ``<method>.png``, ``<method>.html`` and ``<method>.json`` under ``out_dir``; returns their paths."""
    title = f"{method} - {summary.get('run', '')} (step {summary.get('step', '?')}, {summary.get('backend', '')})"
    png = draw(method, per_feature, examples, title)
    flat = per_feature.reshape(-1)
    ranking = [int(j) for j in np.argsort(-flat)[:20]]
    rows = "".join(f"<tr><td>{rank + 1}</td><td>{j}</td><td>{flat[j]:.6g}</td></tr>"
                   for rank, j in enumerate(ranking))
    facts = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                    for k, v in summary.items())
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><table>{facts}</table>"
            f"<p><img alt='{html.escape(method)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'></p>"
            "<h2>Top features</h2><p>Features are flattened input positions (row-major over the example's "
            f"shape {list(per_feature.shape)}).</p><table><tr><th>rank</th><th>feature</th><th>value</th></tr>"
            f"{rows}</table></body></html>")
    paths = {"png": out_dir / f"{method}.png", "html": out_dir / f"{method}.html", "json": out_dir / f"{method}.json"}
    atomic_write_bytes(paths["png"], png)
    atomic_write_text(paths["html"], page)
    data = {**summary, "ranking": ranking, "per_feature": flat.tolist(), "shape": list(per_feature.shape)}
    atomic_write_text(paths["json"], json.dumps(data, indent=1))
    return paths


def write_attention_report(out_dir: Path, png: bytes, maps: np.ndarray, summary: dict[str, Any]) -> dict[str, Path]:
    """``attention.png``, ``attention.html`` (the PNG inlined) and ``attention.json`` (first sequence's maps)."""
    title = f"attention - {summary.get('run', '')} (step {summary.get('step', '?')})"
    facts = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                    for k, v in summary.items())
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><table>{facts}</table><p>Rows: layers; columns: heads. Each map is "
            "query position (down) by key position (across) for the first sequence.</p>"
            f"<p><img alt='attention' src='data:image/png;base64,{base64.b64encode(png).decode()}'></p></body></html>")
    paths = {"png": out_dir / "attention.png", "html": out_dir / "attention.html", "json": out_dir / "attention.json"}
    atomic_write_bytes(paths["png"], png)
    atomic_write_text(paths["html"], page)
    data = {**summary, "shape": list(maps.shape), "first_sequence": np.round(maps[:, 0], 6).tolist()}
    atomic_write_text(paths["json"], json.dumps(data))
    return paths
