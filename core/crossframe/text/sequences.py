"""Token sequences into language-model rows: packing, truncation and sliding windows.

Every function returns (or yields) a batch: a dict of numpy arrays ``{"x": [B, T], "y": [B, T]}``,
``y`` being ``x`` shifted one token left (``y[:, j]`` is the token after ``x[:, j]``), plus
``"mask"`` (float32 ``[B, T]``, 1.0 where ``y`` counts in the loss, 0.0 on padding or on
targets another window already scores) when some positions must not count. Padded positions
hold ``pad_id`` in both ``x`` and ``y``, so every id stays a valid embedding index; the loss is
``sum(loss * mask) / sum(mask)``. ``x`` and ``y`` are int32 by default (every backend indexes
embeddings with it; cast ``y`` if your loss wants int64).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from crossframe.errors import ConfigError

Batch = dict[str, np.ndarray]


def _check_seq_len(seq_len: int) -> None:
    if seq_len < 1:
        raise ConfigError(f"seq_len: must be at least 1 (got {seq_len})")


# --------------------------------------------------------------------------- packing


def packed_block_count(n_tokens: int, seq_len: int) -> int:
    """Blocks in a packed stream of ``n_tokens``: ``(n_tokens - 1) // seq_len``.

    Block ``b`` is ``tokens[b * seq_len : b * seq_len + seq_len + 1]``: blocks of ``seq_len + 1``
    tokens that overlap by one, so that every token is an input exactly once and every token but
    the first is a target exactly once. The last ``(n_tokens - 1) % seq_len`` targets form no
    full block.
    """
    _check_seq_len(seq_len)
    return max(0, (n_tokens - 1) // seq_len)


def gather_blocks(tokens: np.ndarray, blocks: np.ndarray, seq_len: int, dtype: type = np.int32) -> Batch:
    """``{"x", "y"}`` of the packed blocks ``blocks`` (block indices) of ``tokens`` (array or memmap)."""
    starts = np.asarray(blocks, dtype=np.int64) * seq_len
    rows = tokens[starts[:, None] + np.arange(seq_len + 1)]
    return {"x": rows[:, :-1].astype(dtype), "y": rows[:, 1:].astype(dtype)}


def pack(tokens: np.ndarray, seq_len: int, *, pad_last: bool = False, pad_id: int = 0,
         dtype: type = np.int32) -> Batch:
    """All packed blocks of a token stream (documents already joined by EOT), in order.

    With ``pad_last`` the targets left after the last full block become one more row, padded,
    and the batch gets a ``mask``; then every token but the first is a target exactly once.
    """
    tokens = np.asarray(tokens).reshape(-1)
    n_blocks = packed_block_count(tokens.size, seq_len)
    batch = gather_blocks(tokens, np.arange(n_blocks), seq_len, dtype)
    tail = tokens[n_blocks * seq_len:]
    if not pad_last:
        return batch
    mask = np.ones((n_blocks, seq_len), dtype=np.float32)
    if tail.size >= 2:
        x, y, m = _padded_row(tail, seq_len, pad_id, dtype)
        batch = {"x": np.vstack([batch["x"], x]), "y": np.vstack([batch["y"], y])}
        mask = np.vstack([mask, m])
    batch["mask"] = mask
    return batch


def _padded_row(piece: np.ndarray, seq_len: int, pad_id: int, dtype: type) -> tuple[np.ndarray, ...]:
    """One row from ``piece`` (2 to seq_len + 1 tokens): x, y padded with ``pad_id`` and the mask."""
    n = piece.size - 1
    x = np.full((1, seq_len), pad_id, dtype=dtype)
    y = np.full((1, seq_len), pad_id, dtype=dtype)
    mask = np.zeros((1, seq_len), dtype=np.float32)
    x[0, :n], y[0, :n], mask[0, :n] = piece[:-1], piece[1:], 1.0
    return x, y, mask


# --------------------------------------------------------------------------- truncation


def truncate(documents: Sequence[np.ndarray | Sequence[int]], seq_len: int, *, eot_id: int, pad_id: int | None = None,
             bos: bool = True, split_long: bool = False, dtype: type = np.int32) -> Batch:
    """One row per document: ``[EOT] + doc + [EOT]`` cut to ``seq_len + 1`` tokens and padded.

    ``bos`` puts an EOT in front (as the token before a document does in a packed stream), so the
    document's first token is a target too. Without ``split_long`` a longer document loses its
    tail; with it the rest continues in further rows (overlapping by one token), so every token
    after the first of each sequence is a target exactly once. Pads (``pad_id``, default
    ``eot_id``) are masked out. A document too short to predict anything gives no row.
    """
    _check_seq_len(seq_len)
    pad = eot_id if pad_id is None else pad_id
    xs, ys, masks = [], [], []
    for doc in documents:
        parts = [[eot_id]] if bos else []
        seq = np.concatenate([*parts, np.asarray(doc, dtype=np.int64).reshape(-1), [eot_id]])
        starts = range(0, seq.size - 1, seq_len) if split_long else range(1 if seq.size >= 2 else 0)
        for start in starts:
            x, y, m = _padded_row(seq[start:start + seq_len + 1], seq_len, pad, dtype)
            xs.append(x)
            ys.append(y)
            masks.append(m)
    if not xs:
        empty = np.empty((0, seq_len), dtype=dtype)
        return {"x": empty, "y": empty.copy(), "mask": np.empty((0, seq_len), dtype=np.float32)}
    return {"x": np.vstack(xs), "y": np.vstack(ys), "mask": np.vstack(masks)}


# --------------------------------------------------------------------------- sliding windows


def sliding_window_plan(n_tokens: int, seq_len: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Where the evaluation windows of a stream of ``n_tokens`` start and which positions count.

    Returns ``(starts, first)``: window ``w`` reads ``tokens[starts[w] : starts[w] + seq_len + 1]``
    and scores its targets at positions ``j >= first[w]``, i.e. tokens ``starts[w] + 1 + j``.
    Windows start every ``stride`` tokens; the first scores all its targets, each later one only
    its last ``stride`` (the ones the previous window did not reach), each with at least
    ``seq_len - stride`` tokens of context. A last window is moved back to end exactly at the
    stream's end and scores only what is left. So every token but the first is scored exactly once.
    A stream shorter than ``seq_len + 1`` gives one (padded) window.
    """
    _check_seq_len(seq_len)
    if not 1 <= stride <= seq_len:
        raise ConfigError(f"stride: must be between 1 and seq_len={seq_len} (got {stride})")
    last_target = n_tokens - 1
    if last_target < 1:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    if last_target <= seq_len:
        return np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64)
    starts = np.arange(0, last_target - seq_len + 1, stride, dtype=np.int64)
    first = np.full(starts.size, seq_len - stride, dtype=np.int64)
    first[0] = 0
    reached = int(starts[-1]) + seq_len
    if reached < last_target:
        final = last_target - seq_len
        starts = np.append(starts, final)
        first = np.append(first, reached - final)
    return starts, first


def sliding_windows(tokens: np.ndarray, seq_len: int, stride: int, batch_size: int, *, pad_id: int = 0,
                    dtype: type = np.int32) -> Iterator[Batch]:
    """Evaluation batches ``{"x", "y", "mask"}`` of the windows of :func:`sliding_window_plan`.

    ``sum(mask)`` over all batches is ``len(tokens) - 1``: each token is predicted once, with
    as much context as the stride allows. The last batch may be smaller.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size: must be at least 1 (got {batch_size})")
    starts, first = sliding_window_plan(len(tokens), seq_len, stride)
    n = len(tokens)
    offsets = np.arange(seq_len + 1)
    for lo in range(0, starts.size, batch_size):
        idx = starts[lo:lo + batch_size, None] + offsets
        inside = idx < n
        rows = np.asarray(tokens[np.minimum(idx, n - 1)]).astype(dtype)
        rows[~inside] = pad_id
        mask = (offsets[None, :-1] >= first[lo:lo + batch_size, None]) & inside[:, 1:]
        yield {"x": rows[:, :-1].copy(), "y": rows[:, 1:].copy(), "mask": mask.astype(np.float32)}
