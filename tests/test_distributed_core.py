"""The framework-free half of distributed runs: where a worker sits, which rows it trains on, the
launcher's checks and its watchdog (real subprocesses, no framework)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossframe.backend import Backend, WorldInfo
from crossframe.config.loading import load_config
from crossframe.data.dataset import DataInfo, Dataset
from crossframe.data.loader import BatchLoader
from crossframe.distributed import shard_rows
from crossframe.distributed.launch import Job, run_local
from crossframe.distributed.world import free_port, world_from_env
from crossframe.errors import CapabilityError, ConfigError, DistributedError
from crossframe.text.loader import LMBatchLoader

TOKENS = np.arange(4000, dtype=np.int32) % 251


def numbered(n: int) -> Dataset:
    """A dataset whose x holds each example's index (so batches can be compared by content)."""
    x = np.arange(n, dtype=np.float32)[:, None]
    return Dataset(x, np.zeros(n, dtype=np.int64), DataInfo("classification", (1,), 2))


# ------------------------------------------------------------------------------------ sharding

@given(world=st.integers(1, 4), per=st.integers(1, 5), accum=st.integers(1, 3), rank_seed=st.integers(0, 99))
def test_shard_rows_partition_each_micro_batch(world: int, per: int, accum: int, rank_seed: int) -> None:
    batch = world * per * accum
    parts = [shard_rows(batch, accum, r, world) for r in range(world)]
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == list(range(batch))  # no overlap, no gap
    r = rank_seed % world
    micro = parts[r].reshape(accum, per)  # the process's k-th micro-batch lies inside the global k-th one
    for k in range(accum):
        assert micro[k].tolist() == list(range(k * world * per + r * per, k * world * per + (r + 1) * per))


@given(world=st.integers(1, 4), per=st.integers(1, 6), accum=st.integers(1, 3), step=st.integers(0, 40),
       seed=st.integers(0, 5))
def test_batch_loader_shards_match_the_single_process_order(world: int, per: int, accum: int, step: int,
                                                             seed: int) -> None:
    data = numbered(200)
    batch = world * per * accum
    single = BatchLoader(data, batch, seed)
    ranks = [BatchLoader(data, batch, seed, rank=r, world_size=world, micro_batches=accum) for r in range(world)]
    whole = single.batch(step)["x"][:, 0].reshape(accum, world * per)
    for r, loader in enumerate(ranks):
        mine = loader.batch(step)["x"][:, 0].reshape(accum, per)
        np.testing.assert_array_equal(mine, whole[:, r * per:(r + 1) * per])


@given(world=st.integers(1, 4), per=st.integers(1, 4), accum=st.integers(1, 2), step=st.integers(0, 20))
def test_lm_loader_shards_match_the_single_process_order(world: int, per: int, accum: int, step: int) -> None:
    batch = world * per * accum
    single = LMBatchLoader(TOKENS, 8, batch, 1)
    whole = single.batch(step)["x"].reshape(accum, world * per, 8)
    for r in range(world):
        loader = LMBatchLoader(TOKENS, 8, batch, 1, rank=r, world_size=world, micro_batches=accum)
        mine = loader.batch(step)["x"].reshape(accum, per, 8)
        np.testing.assert_array_equal(mine, whole[:, r * per:(r + 1) * per])


def test_uneven_global_batch_is_one_line() -> None:
    with pytest.raises(ConfigError, match="does not split into 2 micro-batches"):
        BatchLoader(numbered(50), 6, 0, rank=0, world_size=2, micro_batches=2)


# ------------------------------------------------------------------------------------ world

def _cfg(**over: Any) -> Any:
    return load_config({"strategy": "data_parallel", **over})


def test_world_defaults_to_one_process() -> None:
    world = world_from_env(load_config({}), environ={})
    assert (world.rank, world.world_size, world.is_main, world.strategy) == (0, 1, True, "single")


def test_world_reads_crossframe_vars_before_torchrun_vars() -> None:
    env = {"CROSSFRAME_RANK": "1", "CROSSFRAME_WORLD_SIZE": "4", "RANK": "3", "WORLD_SIZE": "8",
           "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "10.0.0.2", "MASTER_PORT": "1234"}
    world = world_from_env(_cfg(launch={"collective_timeout_s": 7}), environ=env)
    assert (world.rank, world.world_size, world.local_rank, world.local_world_size) == (1, 4, 1, 2)
    assert (world.master_addr, world.master_port, world.collective_timeout_s) == ("10.0.0.2", 1234, 7.0)
    assert not world.is_main


@pytest.mark.parametrize(("env", "message"), [
    ({"CROSSFRAME_RANK": "x", "CROSSFRAME_WORLD_SIZE": "2"}, "CROSSFRAME_RANK: 'x' is not an integer"),
    ({"CROSSFRAME_RANK": "2", "CROSSFRAME_WORLD_SIZE": "2"}, "outside 0..1"),
    ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_PORT": "70000"}, "not a port"),
])
def test_bad_world_vars_are_one_line(env: dict[str, str], message: str) -> None:
    with pytest.raises(DistributedError, match=message):
        world_from_env(_cfg(), environ=env)


def test_several_workers_need_a_strategy() -> None:
    with pytest.raises(DistributedError, match="strategy: 'single' cannot run 2 workers"):
        world_from_env(load_config({}), environ={"CROSSFRAME_RANK": "0", "CROSSFRAME_WORLD_SIZE": "2"})


class _OneProcessBackend(Backend):
    """A backend that overrides none of the distributed methods (only what the ABC demands)."""

    name = "plain"

    def framework_version(self) -> str:
        return "0"

    def capabilities(self) -> Any:
        raise NotImplementedError

    def create_state(self, setup: Any) -> Any:
        raise NotImplementedError

    def train_step(self, state: Any, batch: Any, lr: float) -> Any:
        raise NotImplementedError

    def eval_step(self, state: Any, batch: Any) -> Any:
        raise NotImplementedError

    def predict(self, state: Any, x: Any) -> Any:
        raise NotImplementedError

    def fetch(self, values: Any) -> Any:
        return values

    def export_state(self, state: Any) -> Any:
        raise NotImplementedError

    def load_state(self, state: Any, weights: Any, optimizer_state: Any) -> Any:
        raise NotImplementedError


def test_backend_defaults_allow_one_process_only() -> None:
    backend = _OneProcessBackend()
    backend.init_distributed(WorldInfo(strategy="data_parallel"), "cpu")  # one process: fine
    assert backend.local_replicas(WorldInfo(), "cpu") == 1
    backend.shutdown_distributed()
    with pytest.raises(CapabilityError, match="backend 'plain' cannot run 2 worker processes"):
        backend.init_distributed(WorldInfo(strategy="data_parallel", world_size=2), "cpu")


# ------------------------------------------------------------------------------------ launcher

def test_launch_flags_without_a_strategy_fail_before_starting(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "crossframe", "run", "digits-mlp", "--nproc-per-node", "2",
                           "--set", f"output_dir={tmp_path}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: strategy: 'single' runs one process, but launch asks for 2; use --strategy data_parallel "
        "or fully_sharded")
    assert not list(tmp_path.iterdir())


def _job(tmp_path: Path, script: str, nproc: int = 3) -> Job:
    errors = tmp_path / "errors"
    errors.mkdir()
    env = {"CROSSFRAME_WORKER": "1", "CROSSFRAME_ERROR_DIR": str(errors)}
    return Job(["-c", textwrap.dedent(script)], env, errors, nproc, 1, 0, "127.0.0.1", free_port(), 30.0)


def test_watchdog_stops_the_others_and_names_the_failed_rank(tmp_path: Path) -> None:
    job = _job(tmp_path, """
        import os, sys, time
        from crossframe.distributed.world import record_failure
        rank = int(os.environ["CROSSFRAME_RANK"])
        if rank == 2:
            record_failure(RuntimeError("loss exploded\\ninside the step"))
            sys.exit(1)
        time.sleep(300)  # the others would wait for rank 2 for ever
    """)
    start = time.monotonic()
    with pytest.raises(DistributedError) as info:
        run_local(job)
    assert time.monotonic() - start < 120  # not a timing claim: the sleeping workers were stopped, not awaited
    assert str(info.value) == ("worker rank 2 of 3 exited with code 1: RuntimeError: inside the step; "
                               "the job was stopped")


def test_watchdog_names_a_worker_that_died_without_a_word(tmp_path: Path) -> None:
    job = _job(tmp_path, """
        import os, time
        if os.environ["CROSSFRAME_RANK"] == "1":
            os._exit(7)
        time.sleep(300)
    """, nproc=2)
    with pytest.raises(DistributedError, match=r"^worker rank 1 of 2 exited with code 7: no error message"):
        run_local(job)


def test_workers_that_all_succeed_end_quietly(tmp_path: Path) -> None:
    marker = tmp_path / "ranks"
    marker.mkdir()
    job = _job(tmp_path, f"""
        import os, pathlib
        pathlib.Path({str(marker)!r}, os.environ["CROSSFRAME_RANK"] + "-" + os.environ["CROSSFRAME_WORLD_SIZE"]
                     + "-" + os.environ["CROSSFRAME_LOCAL_RANK"]).touch()
    """)
    run_local(job)
    assert sorted(p.name for p in marker.iterdir()) == ["0-3-0", "1-3-1", "2-3-2"]


WORKER_EXIT = """
import atexit, sys, threading, time

class Teardown:
    def __del__(self):
        print("teardown", flush=True)

keep = Teardown()  # a module global: interpreter teardown would collect it
atexit.register(lambda: print("atexit ran"))
threading.Thread(target=lambda: (time.sleep(0.2), print("thread done"))).start()
sys.argv = ["crossframe", *sys.argv[1:]]
from crossframe.cli.main import entry
entry()
"""


@pytest.mark.parametrize(("args", "code"), [(["--version"], 0), (["run", "no-such.yaml"], 2)])
def test_a_launched_worker_ends_without_interpreter_teardown(tmp_path: Path, args: list[str], code: int) -> None:
    """A worker ends as multiprocessing's children do (threads joined, atexit run, streams flushed, no
    teardown), which keeps gloo from aborting at exit; the exit code is the command's. A plain process
    tears down as usual."""
    import os

    for worker, torn_down in (("1", False), ("", True)):
        env = {**os.environ, "CROSSFRAME_WORKER": worker}
        env.pop("TORCHELASTIC_RUN_ID", None)
        proc = subprocess.run([sys.executable, "-c", WORKER_EXIT, *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == code, proc.stderr[-1000:]
        lines = proc.stdout.splitlines()
        assert "thread done" in lines and "atexit ran" in lines, proc.stdout
        assert ("teardown" in lines) is torn_down, proc.stdout


@pytest.mark.parametrize(("survivor_error", "first"), [
    ("DistributedError: rank 0 of 2: a collective of MultiWorkerMirroredStrategy failed", 1),
    ("ValueError: bad batch", 0),
])
def test_the_first_failure_is_the_cause_not_the_broken_collective(tmp_path: Path, survivor_error: str,
                                                                  first: int) -> None:
    """Rank 1 dies without a word and is only seen at the next poll; rank 0 has already written that its
    collective broke. The dead rank is named, unless rank 0's error was its own (then the earlier wins)."""
    from types import SimpleNamespace

    from crossframe.distributed.launch import first_failure

    (tmp_path / "rank_0.err").write_text(survivor_error + "\n")
    seen = (tmp_path / "rank_0.err").stat().st_mtime + 0.5
    job = SimpleNamespace(error_dir=tmp_path)
    assert first_failure(job, {0: (1, seen), 1: (3, seen)}) == first  # type: ignore[arg-type]
    assert first_failure(job, {0: (1, seen), 1: (-15, seen)}) == 0  # type: ignore[arg-type]  # killed: followed


def test_a_launcher_port_block_is_free_and_outside_the_ephemeral_range() -> None:
    """Workers bind their ports seconds after the launcher picks them; a block below the kernel's ephemeral
    range cannot be taken meanwhile as an outgoing connection's source port (a TensorFlow CI flake)."""
    import socket

    from crossframe.distributed.world import ephemeral_ports, free_port_block

    low, high = ephemeral_ports()
    assert 0 < low <= high <= 65535
    for count in (1, 2, 4):
        base = free_port_block(count)
        if low - count > 20000:
            assert base >= 20000 and base + count <= low, (base, low)
        socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
        try:
            for port, sock in zip(range(base, base + count), socks, strict=True):
                sock.bind(("127.0.0.1", port))  # every port of the block is free
        finally:
            for sock in socks:
                sock.close()
