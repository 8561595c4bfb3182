"""``--profile N``: each backend's own profiler writes a trace into the run, and the trace parses."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

import crossframe
from crossframe.cli.main import main
from crossframe.train.profile import ProfileWindow
from tests.conftest import tiny_config


def _xspace(path: Path):
    xplane_pb2 = pytest.importorskip("tensorflow.tsl.profiler.protobuf.xplane_pb2")
    return xplane_pb2.XSpace.FromString(path.read_bytes())


def test_torch_profile_writes_a_chrome_trace_of_aten_ops(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("torch")
    cfg = workdir / "tiny.json"
    cfg.write_text(json.dumps({**tiny_config(steps=10), "name": "prof"}))
    assert main(["run", str(cfg), "--quiet", "--profile", "3", "--sample-tokens", "0"]) == 0
    trace = json.loads((workdir / "runs" / "prof" / "profile" / "trace.json").read_text())
    names = {e.get("name", "") for e in trace["traceEvents"]}
    assert any(n.startswith("aten::") for n in names)
    assert any("optimizer" in n.lower() or "foreach" in n for n in names)


@pytest.mark.slow
def test_jax_profile_writes_xplane_and_a_perfetto_trace(workdir: Path) -> None:
    pytest.importorskip("jax")
    cfg = {**tiny_config(steps=10, profile_steps=3), "backend": "jax", "name": "jp"}
    run_dir = crossframe.run(cfg, quiet=True).run_dir
    sessions = list((run_dir / "profile" / "plugins" / "profile").iterdir())
    assert len(sessions) == 1
    perfetto = next(sessions[0].glob("*.trace.json.gz"))
    events = json.loads(gzip.decompress(perfetto.read_bytes()))
    events = events["traceEvents"] if isinstance(events, dict) else events
    assert any(e.get("ph") == "X" for e in events)
    planes = {p.name for p in _xspace(next(sessions[0].glob("*.xplane.pb"))).planes}
    assert "/host:CPU" in planes


@pytest.mark.slow
def test_tensorflow_profile_writes_xplane_with_the_step_ops(workdir: Path) -> None:
    pytest.importorskip("tensorflow")
    cfg = {**tiny_config(steps=10, profile_steps=3), "backend": "tensorflow", "name": "tp"}
    run_dir = crossframe.run(cfg, quiet=True).run_dir
    (xplane,) = (run_dir / "profile").rglob("*.xplane.pb")
    space = _xspace(xplane)
    names = [m.name for p in space.planes for m in p.event_metadata.values()]
    assert any("MatMul" in n for n in names)


class _Recorder:
    """A backend stand-in whose profiler records when it opens and closes."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def profiler(self, directory: Path, device: str):
        recorder = self

        class Context:
            def __enter__(self):
                recorder.events.append("open")

            def __exit__(self, *exc):
                recorder.events.append("close")

        return Context()


@pytest.mark.parametrize(("first", "total", "steps", "warmup", "window"), [
    (0, 20, 3, 2, (2, 5)), (0, 3, 5, 2, (2, 3)), (0, 2, 5, 2, (0, 2)), (10, 20, 4, 2, (12, 16)),
])
def test_window_opens_after_warmup_and_closes_at_its_end(tmp_path: Path, first: int, total: int, steps: int,
                                                         warmup: int, window: tuple[int, int]) -> None:
    backend = _Recorder()
    profile = ProfileWindow(backend, "x", "cpu", tmp_path, first, total, steps, warmup)
    opened_at = closed_at = None
    for step in range(first, total):
        profile.before(step)
        if backend.events == ["open"] and opened_at is None:
            opened_at = step
        profile.after(step + 1)
        if backend.events == ["open", "close"] and closed_at is None:
            closed_at = step + 1
    assert (opened_at, closed_at) == window
    assert backend.events == ["open", "close"]
