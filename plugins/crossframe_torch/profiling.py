"""``--profile N`` on torch: ``torch.profiler`` over the window, a Chrome/Perfetto trace on exit."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

TRACE_FILE = "trace.json"


@contextlib.contextmanager
def profile(directory: Path, device: str) -> Iterator[None]:
    """Profile CPU (and CUDA when the run is on a GPU) activity; write ``directory/trace.json``."""
    import torch
    from torch.profiler import ProfilerActivity

    activities = [ProfilerActivity.CPU]
    if device.startswith("cuda") or device == "gpu":
        activities.append(ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities, record_shapes=True) as prof:
        yield
        if ProfilerActivity.CUDA in activities:
            torch.cuda.synchronize()
    prof.export_chrome_trace(str(Path(directory) / TRACE_FILE))
