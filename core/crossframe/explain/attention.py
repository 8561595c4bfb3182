"""Attention maps of a decoder built from neutral layers (``gpt``, an imported GPT-2 or Llama, a graph), per
layer and head, read from its canonical weights.

Neutral: the maps come from the graph's numpy reference (:meth:`crossframe.nn.graph.Graph.reference`, which
collects each attention layer's weights) run on the checkpoint's canonical weights, identical on every
backend by construction, so no backend needs a method for them. :func:`attention_maps` returns the logits
too: the reference forward's, so the maps are those of the model that produced them.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from crossframe.errors import CapabilityError
from crossframe.models.spec import ModelSpec


def has_attention(spec: ModelSpec) -> bool:
    """Whether ``spec`` is a graph with at least one attention layer."""
    return spec.graph is not None and "attention" in spec.graph.kinds()


def attention_maps(spec: ModelSpec, weights: Mapping[str, np.ndarray], tokens: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``(maps [layers, B, heads, T, T], logits [B, T, vocab])`` for int ``tokens [B, T]``.

    ``maps[l, b, h, i, j]`` is how much position ``i`` attends to position ``j <= i`` in head ``h``
    of attention layer ``l``; each row sums to 1.
    """
    if not has_attention(spec):
        raise CapabilityError(f"--method: 'attention' needs a model with attention layers; this run's model "
                              f"'{spec.name}' has none")
    assert spec.graph is not None
    maps: list[np.ndarray] = []
    logits = spec.graph.reference(weights, np.asarray(tokens, dtype=np.int64), attention=maps)
    if len({m.shape for m in maps}) != 1:
        raise CapabilityError(f"--method: 'attention' needs every attention layer of '{spec.name}' to have the "
                              "same number of heads")
    return np.stack(maps), logits


def draw_maps(maps: np.ndarray, title: str) -> bytes:
    """PNG bytes: a grid of layers (rows) by heads (columns) for the first sequence."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    layers, heads = maps.shape[0], maps.shape[2]
    fig = Figure(figsize=(1.9 * heads + 0.5, 1.9 * layers + 0.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(layers, heads, squeeze=False)
    for li in range(layers):
        for hi in range(heads):
            axes[li][hi].imshow(maps[li, 0, hi], cmap="viridis", vmin=0.0, vmax=1.0)
            axes[li][hi].set_title(f"layer {li} head {hi}", fontsize=7)
            axes[li][hi].axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()
