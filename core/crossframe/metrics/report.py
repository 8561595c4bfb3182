"""The per-class report as text: one row per class, then the macro and weighted averages."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def per_class_table(rows: np.ndarray, class_names: Sequence[str] = ()) -> str:
    """Format ``per_class`` output (``[C, 4]``: precision, recall, f1, support) like scikit-learn's
    ``classification_report``; classes with no support and no predictions still get a row."""
    rows = np.asarray(rows, dtype=np.float64)
    names = [class_names[i] if i < len(class_names) else str(i) for i in range(len(rows))]
    width = max([len("weighted avg"), *(len(n) for n in names)])
    lines = [f"{'':>{width}}  precision  recall  f1-score  support"]
    for name, (p, r, f, s) in zip(names, rows, strict=True):
        lines.append(f"{name:>{width}}  {p:9.4f}  {r:6.4f}  {f:8.4f}  {int(s):7d}")
    support = rows[:, 3]
    total = support.sum()
    lines.append(f"{'macro avg':>{width}}  {rows[:, 0].mean():9.4f}  {rows[:, 1].mean():6.4f}  "
                 f"{rows[:, 2].mean():8.4f}  {int(total):7d}")
    if total > 0:
        w = support / total
        lines.append(f"{'weighted avg':>{width}}  {w @ rows[:, 0]:9.4f}  {w @ rows[:, 1]:6.4f}  "
                     f"{w @ rows[:, 2]:8.4f}  {int(total):7d}")
    return "\n".join(lines)
