"""Attention maps of a ``gpt`` model, per layer and head, read from its canonical weights.

Neutral: the maps come from the numpy reference of :mod:`crossframe.models.gpt` run on the
checkpoint's canonical weights (identical on every backend by construction), so no backend
needs a method for them. :func:`attention_maps` returns the logits too; they equal the
reference forward's, which ``tests/test_explain.py`` checks, so the maps are those of the model
that produced them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from crossframe.errors import CapabilityError
from crossframe.models import reference as ref
from crossframe.models.gpt import layer_norm, rotary
from crossframe.models.spec import ModelSpec, dense_apply


def attention_maps(spec: ModelSpec, weights: Mapping[str, np.ndarray], tokens: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``(maps [layers, B, heads, T, T], logits [B, T, vocab])`` for int ``tokens [B, T]``.

    ``maps[l, b, h, i, j]`` is how much position ``i`` attends to position ``j <= i`` in head ``h``
    of layer ``l``; each row sums to 1.
    """
    if spec.name != "gpt":
        raise CapabilityError(f"--method: 'attention' needs a 'gpt' model; this run's model is '{spec.name}'")
    p = spec.params
    n_head, d = int(p["n_head"]), int(p["d_model"])
    w = {k: np.asarray(v, np.float64) for k, v in weights.items()}
    tokens = np.asarray(tokens, dtype=np.int64)
    b, t = tokens.shape
    h = w["wte"][tokens]
    if not p.get("rope", False):
        h = h + w["wpe"][:t]
    causal = np.tril(np.ones((t, t), dtype=bool))
    maps = []
    for i in range(int(p["n_layer"])):
        prefix = f"h.{i}"
        a = layer_norm(h, w[f"{prefix}.ln_1.weight"], w[f"{prefix}.ln_1.bias"])
        qkv = dense_apply(w, f"{prefix}.attn.qkv", a)
        q, k, v = (part.reshape(b, t, n_head, d // n_head).transpose(0, 2, 1, 3) for part in np.split(qkv, 3, axis=-1))
        if p.get("rope", False):
            q, k = rotary(q, float(p["rope_base"])), rotary(k, float(p["rope_base"]))
        scores = np.where(causal, q @ np.swapaxes(k, -1, -2) / math.sqrt(d // n_head), -np.inf)
        probs = np.exp(scores - scores.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        maps.append(probs)
        att = (probs @ v).transpose(0, 2, 1, 3).reshape(b, t, d)
        h = h + dense_apply(w, f"{prefix}.attn.proj", att)
        m = layer_norm(h, w[f"{prefix}.ln_2.weight"], w[f"{prefix}.ln_2.bias"])
        h = h + dense_apply(w, f"{prefix}.mlp.proj", ref.activation("gelu", dense_apply(w, f"{prefix}.mlp.fc", m)))
    h = layer_norm(h, w["ln_f.weight"], w["ln_f.bias"])
    head = w["wte"].T if p.get("tied_embeddings", True) else w["lm_head.weight"]
    return np.stack(maps), h @ head


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
