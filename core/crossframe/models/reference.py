"""Numpy reference operations, computed in float64: the truth every backend is tested against."""

from __future__ import annotations

import numpy as np


def dense(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``x @ w + b`` with canonical ``[in, out]`` weights."""
    return x.astype(np.float64) @ w.astype(np.float64) + b.astype(np.float64)


def activation(name: str, x: np.ndarray) -> np.ndarray:
    """ReLU, tanh or GELU (the tanh approximation used by GPT-2)."""
    if name == "relu":
        return np.maximum(x, 0.0)
    if name == "tanh":
        return np.tanh(x)
    if name == "gelu":
        return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))
    raise ValueError(f"unknown activation '{name}'")


def conv2d_same(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Stride-1 convolution with 'same' zero padding; NHWC input, HWIO kernel (odd sizes)."""
    kh, kw = w.shape[:2]
    padded = np.pad(x.astype(np.float64), ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (kh, kw), axis=(1, 2))  # N,H,W,C,kh,kw
    return np.einsum("nhwcij,ijco->nhwo", windows, w.astype(np.float64), optimize=True) + b


def max_pool2(x: np.ndarray) -> np.ndarray:
    """2x2 max pooling with stride 2 on NHWC (odd trailing rows/columns are dropped)."""
    n, h, w, c = x.shape
    x = x[:, : h - h % 2, : w - w % 2, :]
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean softmax cross-entropy."""
    z = logits - logits.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(labels)), labels].mean())
