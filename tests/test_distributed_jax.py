"""The jax backend beyond one device: a mesh over 4 forced host devices, and 2 real processes.

Several host devices exist only when ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` is set
before jax is imported, so those checks run in a fresh interpreter (:data:`MESH_SCRIPT`) that
prints what it measured as JSON; the assertions are made here. The multi-process runs go through
``crossframe run --nproc-per-node 2`` (the core launcher, gloo collectives between the workers)
and are compared with a single process training on the doubled batch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("jax")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

import crossframe  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-5

MESH_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import jax
    import crossframe
    from crossframe.backend import TrainSetup, WorldInfo
    from crossframe.data.dataset import DataInfo
    from crossframe.distributed import free_port
    from crossframe.errors import DistributedError
    from crossframe.models import build_model
    from crossframe_jax.backend import JaxBackend

    B = JaxBackend()
    out = {"devices": len(jax.devices())}

    # a rank whose coordinator never comes: one line, not an abort, and jax left untouched
    try:
        B.init_distributed(WorldInfo("data_parallel", rank=1, world_size=2, master_port=free_port(),
                                     collective_timeout_s=1), "cpu")
    except DistributedError as exc:
        out["no_coordinator"] = str(exc)

    def world(strategy):
        return None if strategy == "single" else WorldInfo(strategy)

    def train(spec, weights, batches, strategy, **kw):
        state = B.create_state(TrainSetup(spec, weights, world=world(strategy), **kw))
        for i, batch in enumerate(batches):
            state, metrics = B.train_step(state, batch, 0.01 * (1 + i % 3))
        return state, {k: float(v) for k, v in B.fetch(metrics).items()}

    def gap(a, b):
        return max(float(np.abs(np.asarray(a[k]) - np.asarray(b[k])).max()) for k in a)

    rng = np.random.default_rng(0)
    b = 2  # rows per device and micro-batch; one device takes 4 * b
    mlp = build_model("mlp", {"hidden": [16]}, DataInfo("classification", (8,), 3))
    w = mlp.init(1)
    steps = [{"x": rng.normal(size=(4 * b * 2, 8)).astype(np.float32), "y": rng.integers(0, 3, 4 * b * 2)}
             for _ in range(20)]
    kw = dict(optimizer="adamw", optimizer_params={"lr": 0.01, "weight_decay": 0.1}, device="cpu",
              grad_accum=2, clip_norm=0.5)
    states, metrics, exported = {}, {}, {}
    for strategy in ("single", "data_parallel", "fully_sharded"):
        states[strategy], metrics[strategy] = train(mlp, w, steps, strategy, **kw)
        exported[strategy] = B.export_state(states[strategy])
    out["replicas"] = {s: B.local_replicas(WorldInfo(s), "cpu") for s in ("single", "data_parallel")}
    out["mlp"] = {s: {"weights": gap(exported["single"][0], exported[s][0]),
                      "optimizer": gap(exported["single"][1], exported[s][1]),
                      "loss": abs(metrics["single"]["loss"] - metrics[s]["loss"]),
                      "grad_norm": abs(metrics["single"]["grad_norm"] - metrics[s]["grad_norm"])}
                  for s in ("data_parallel", "fully_sharded")}
    out["fs_vs_dp"] = gap(exported["data_parallel"][0], exported["fully_sharded"][0])
    def specs(arrays):
        return sorted({json.dumps(list(v.sharding.spec)) for v in jax.tree.leaves(arrays)})

    out["specs"] = {s: specs(states[s].params)
                    for s in ("data_parallel", "fully_sharded")}
    out["slot_specs"] = specs(states["fully_sharded"].opt_state)

    # the collectives are XLA's: the compiled data-parallel step all-reduces the gradients
    dp = states["data_parallel"]
    plan = dp.program.plan
    x, y = plan.batch(steps[0]["x"], True), plan.batch(steps[0]["y"], True)
    hlo = dp.program.train.jitted.lower(dp.params, dp.opt_state, x, y, None, np.float32(0.01)).compile().as_text()
    out["all_reduce"] = "all-reduce" in hlo

    # eval and predict: batches that split over the devices and batches that do not
    evals = {}
    for s in states:
        sums = [B.fetch(B.eval_step(states[s], {"x": steps[0]["x"][:n], "y": steps[0]["y"][:n]})) for n in (8, 7)]
        evals[s] = {"loss": [float(v["loss_sum"]) for v in sums], "confusion": [v["confusion"] for v in sums],
                    "predict": B.predict(states[s], steps[1]["x"][:5])}
    out["eval"] = {s: {"loss": max(abs(a - c) for a, c in zip(evals["single"]["loss"], evals[s]["loss"])),
                       "confusion_equal": all(np.array_equal(a, c) for a, c in
                                              zip(evals["single"]["confusion"], evals[s]["confusion"])),
                       "predict": float(np.abs(evals["single"]["predict"] - evals[s]["predict"]).max())}
                   for s in ("data_parallel", "fully_sharded")}

    # canonical state round trip: load into a fresh sharded state, same arrays, same shardings
    fresh = B.create_state(TrainSetup(mlp, mlp.init(9), world=world("fully_sharded"), **kw))
    loaded = B.load_state(fresh, *exported["fully_sharded"])
    again = B.export_state(loaded)
    out["round_trip"] = max(gap(exported["fully_sharded"][0], again[0]), gap(exported["fully_sharded"][1], again[1]))
    out["round_trip_specs"] = specs(loaded.params)

    # a language model: masked token loss summed over the global batch, accumulation, dropout off
    t, vocab = 8, 32
    gpt = build_model("gpt", {"n_layer": 1, "n_head": 2, "d_model": 16, "max_seq_len": t},
                      DataInfo("language_modeling", (t,), vocab))
    gw = gpt.init(2)
    lm = []
    for _ in range(6):
        ids = rng.integers(0, vocab, size=(4 * b * 2, t + 1))
        mask = (rng.random((4 * b * 2, t)) > 0.3).astype(np.float32)
        mask[:3] = 0.0  # whole rows that count for nothing, all on the first devices
        lm.append({"x": ids[:, :-1], "y": ids[:, 1:], "mask": mask})
    # sgd: adam would turn the key bias's gradient (zero but for rounding) into full-size steps
    lkw = dict(optimizer="sgd", optimizer_params={"lr": 0.01, "momentum": 0.9}, device="cpu", grad_accum=2)
    got = {s: train(gpt, gw, lm, s, **lkw) for s in ("single", "data_parallel", "fully_sharded")}
    base = B.export_state(got["single"][0])[0]
    out["gpt"] = {s: {"weights": gap(base, B.export_state(got[s][0])[0]),
                      "loss": abs(got["single"][1]["loss"] - got[s][1]["loss"])}
                  for s in ("data_parallel", "fully_sharded")}

    # pruning masks and a distillation teacher ride along on the mesh as on one device
    from crossframe.backend import DistillSetup
    masks = {"layers.0.weight": (rng.random(mlp.table[0].shape) > 0.5).astype(np.float32)} \
        if mlp.table[0].name == "layers.0.weight" else {}
    assert masks, [p.name for p in mlp.table]
    teacher = DistillSetup(mlp, mlp.init(5), temperature=2.0, alpha=0.5)
    extra = {s: B.export_state(train(mlp, w, steps[:5], s, masks=masks, distill=teacher, **kw)[0])[0]
             for s in ("single", "fully_sharded")}
    out["masks_distill"] = gap(extra["single"], extra["fully_sharded"])
    out["pruned_zero"] = bool(np.all(extra["fully_sharded"]["layers.0.weight"][masks["layers.0.weight"] == 0] == 0))

    # bf16 compute keeps working on the mesh (summation order differs, so a looser bound)
    bf = {s: B.export_state(train(mlp, w, steps[:5], s, **{**kw, "precision": "bf16"})[0])[0]
          for s in ("single", "data_parallel")}
    out["bf16"] = gap(bf["single"], bf["data_parallel"])

    # through the runner: per-device batch b on 4 devices == one device with batch 4b
    cfg = json.loads(sys.argv[1])
    one = crossframe.run({**cfg, "name": "one", "train": {**cfg["train"], "batch_size": 4 * b}}, quiet=True)
    dp = crossframe.run({**cfg, "name": "dp", "strategy": "data_parallel", "train": {**cfg["train"], "batch_size": b}},
                        quiet=True)
    out["run_dirs"] = [str(one.run_dir.resolve()), str(dp.run_dir.resolve())]
    # a data-parallel checkpoint resumes fully sharded, and goes on as one device would
    longer = crossframe.run({**cfg, "name": "longer", "train": {**cfg["train"], "batch_size": 4 * b, "steps": 30}},
                            quiet=True)
    crossframe.run(None, ["strategy=fully_sharded", "train.steps=30"], resume=dp.run_dir, quiet=True)
    out["resumed_dirs"] = [str(longer.run_dir.resolve()), str(dp.run_dir.resolve())]
    print("RESULT " + json.dumps(out, default=lambda a: np.asarray(a).tolist()))
    """
)


def tiny_cfg(**train: Any) -> dict[str, Any]:
    """A 20-step MLP on synthetic data, trained by the jax backend."""
    return {"backend": "jax", "device": "cpu", "seed": 3,
            "data": {"name": "synthetic", "samples": 256, "features": 8, "classes": 3},
            "model": {"name": "mlp", "hidden": [16]},
            "train": {"steps": 20, "batch_size": 8, "log_every": 5, "eval_every": 0,
                      "optimizer": {"name": "adamw", "lr": 0.01, "weight_decay": 0.01}, **train}}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CROSSFRAME_", "XLA_FLAGS"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "core"), str(ROOT / "plugins"),
                                                      env.get("PYTHONPATH", "")]))
    return {**env, **extra}


def final_weights(run_dir: Path | str, step: int | None = None) -> dict[str, np.ndarray]:
    """The canonical weights of a run's checkpoint at ``step`` (default: the latest)."""
    steps = sorted((Path(run_dir) / "checkpoints").glob("step_*"), key=lambda p: int(p.name[5:]))
    chosen = steps[-1] if step is None else Path(run_dir) / "checkpoints" / f"step_{step}"
    return safetensors_numpy.load_file(str(chosen / "model.safetensors"))


def max_gap(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """The largest absolute difference between two sets of same-named arrays."""
    assert sorted(a) == sorted(b)
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run :data:`MESH_SCRIPT` once with 4 host devices; its measurements as a dict."""
    workdir = tmp_path_factory.mktemp("mesh")
    proc = subprocess.run([sys.executable, "-c", MESH_SCRIPT, json.dumps(tiny_cfg())], cwd=workdir,
                          env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=4"),
                          capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def test_the_mesh_spans_four_host_devices_and_each_is_a_replica(mesh: dict[str, Any]) -> None:
    assert mesh["devices"] == 4
    assert mesh["replicas"] == {"single": 1, "data_parallel": 4}


@pytest.mark.parametrize("strategy", ["data_parallel", "fully_sharded"])
def test_four_devices_with_batch_b_train_like_one_device_with_batch_4b(mesh: dict[str, Any], strategy: str) -> None:
    got = mesh["mlp"][strategy]  # adamw with weight decay, grad_accum 2, clipping, 20 steps
    assert got["weights"] <= TOL and got["optimizer"] <= TOL
    assert got["loss"] <= TOL and got["grad_norm"] <= TOL
    assert mesh["gpt"][strategy]["weights"] <= TOL and mesh["gpt"][strategy]["loss"] <= TOL


def test_fully_sharded_matches_data_parallel_and_really_shards(mesh: dict[str, Any]) -> None:
    assert mesh["fs_vs_dp"] <= TOL
    assert mesh["specs"]["data_parallel"] == ["[]"]  # replicated
    assert '[null, "data"]' in mesh["specs"]["fully_sharded"]  # weights split on their widest axis
    assert any('"data"' in spec for spec in mesh["slot_specs"])  # and so are adamw's slots
    assert mesh["round_trip"] == 0.0 and mesh["round_trip_specs"] == mesh["specs"]["fully_sharded"]


def test_xla_inserts_the_gradient_all_reduce(mesh: dict[str, Any]) -> None:
    assert mesh["all_reduce"]


@pytest.mark.parametrize("strategy", ["data_parallel", "fully_sharded"])
def test_eval_and_predict_on_the_mesh_match_one_device(mesh: dict[str, Any], strategy: str) -> None:
    got = mesh["eval"][strategy]
    assert got["loss"] <= TOL and got["confusion_equal"] and got["predict"] <= TOL


def test_masks_and_a_teacher_work_on_the_mesh(mesh: dict[str, Any]) -> None:
    assert mesh["masks_distill"] <= TOL and mesh["pruned_zero"]


def test_bf16_trains_on_the_mesh(mesh: dict[str, Any]) -> None:
    assert mesh["bf16"] <= 2e-2  # bf16 sums in another order; still the same training


def test_the_runner_gives_each_device_batch_size_rows(mesh: dict[str, Any]) -> None:
    one, dp = (final_weights(d, 20) for d in mesh["run_dirs"])
    assert max_gap(one, dp) <= TOL


def test_a_data_parallel_checkpoint_resumes_fully_sharded(mesh: dict[str, Any]) -> None:
    longer, resumed = mesh["resumed_dirs"]
    assert max_gap(final_weights(longer, 30), final_weights(resumed, 30)) <= TOL


def test_a_missing_coordinator_is_one_line(mesh: dict[str, Any]) -> None:
    message = mesh["no_coordinator"]
    assert "rank 1 found no jax coordinator" in message and "collective_timeout_s" in message
    assert "\n" not in message


def test_capabilities_list_the_mesh_strategies() -> None:
    from crossframe_jax.backend import JaxBackend

    assert JaxBackend().capabilities().strategies == ("single", "data_parallel", "fully_sharded")


@pytest.mark.parametrize(("strategy", "grad_accum"), [("data_parallel", 1), ("fully_sharded", 2)])
def test_two_processes_train_like_one_with_the_doubled_batch(workdir: Path, strategy: str, grad_accum: int) -> None:
    cfg = tiny_cfg(grad_accum=grad_accum)
    (workdir / "cfg.json").write_text(json.dumps(cfg))
    proc = subprocess.run([sys.executable, "-m", "crossframe", "run", "cfg.json", "--backend", "jax",
                           "--strategy", strategy, "--nproc-per-node", "2", "--set", "name=two"],
                          cwd=workdir, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    one = crossframe.run({**cfg, "name": "one", "train": {**cfg["train"], "batch_size": 16}}, quiet=True)
    assert one.steps == 20
    assert max_gap(final_weights(workdir / "runs" / "two"), final_weights(one.run_dir)) <= TOL


def test_a_worker_that_dies_stops_the_other_with_one_line(workdir: Path) -> None:
    from crossframe.distributed import free_port

    cfg = tiny_cfg(steps=3000, checkpoint_every=3)
    (workdir / "cfg.json").write_text(json.dumps(cfg))
    errors = workdir / "errors"
    errors.mkdir()
    common = {"CROSSFRAME_WORKER": "1", "CROSSFRAME_WORLD_SIZE": "2", "CROSSFRAME_LOCAL_WORLD_SIZE": "2",
              "CROSSFRAME_MASTER_ADDR": "127.0.0.1", "CROSSFRAME_MASTER_PORT": str(free_port()),
              "CROSSFRAME_RUN_DIR": str(workdir / "runs" / "dies"), "CROSSFRAME_ERROR_DIR": str(errors),
              "CROSSFRAME_FAULT_EXIT": "1:5"}  # rank 1 exits right after step 5
    workers = [subprocess.Popen([sys.executable, "-m", "crossframe", "run", "cfg.json", "--strategy", "data_parallel",
                                 "--set", "launch.collective_timeout_s=5", "-q"], cwd=workdir,
                                env=_env(**common, CROSSFRAME_RANK=str(r), CROSSFRAME_LOCAL_RANK=str(r)),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for r in (0, 1)]
    codes = [w.wait(timeout=240) for w in workers]  # no hang: rank 0 ends on its own
    assert codes[1] == 3 and codes[0] != 0
    line = (errors / "rank_0.err").read_text().strip()
    assert line.startswith("DistributedError: collective: worker 0 of 2 lost its peers") and "\n" not in line
    assert (workdir / "runs" / "dies" / "checkpoints" / "step_3").is_dir()  # the last good checkpoint stays


def test_an_interrupt_stops_both_processes_at_one_step_and_the_run_resumes(workdir: Path) -> None:
    """The core's launcher passes a Ctrl-C on to its workers (each in a session of its own); rank 1 has it
    after step 7, and the ranks agree at the next log boundary (10): one checkpoint, exit 130, one line."""
    cfg = tiny_cfg()
    (workdir / "cfg.json").write_text(json.dumps(cfg))
    proc = subprocess.run([sys.executable, "-m", "crossframe", "run", "cfg.json", "--strategy", "data_parallel",
                           "--nproc-per-node", "2", "--set", "name=ctrlc", "-q"], cwd=workdir,
                          env=_env(CROSSFRAME_FAULT_SIGNAL="1:7"),  # test-only: rank 1 interrupts the launcher
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 130, (proc.stdout + proc.stderr)[-3000:]
    run_dir = workdir / "runs" / "ctrlc"
    last = proc.stderr.strip().splitlines()[-1]
    assert last == ("interrupted after step 10: checkpoint written to 'runs/ctrlc/checkpoints/step_10'; "
                    "continue with --resume runs/ctrlc"), last
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step_*")) == ["step_10"]
    two = subprocess.run([sys.executable, "-m", "crossframe", "run", "--resume", str(run_dir), "--strategy",
                          "data_parallel", "--nproc-per-node", "2", "-q"], cwd=workdir, env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, (two.stdout + two.stderr)[-3000:]
    one = crossframe.run({**cfg, "name": "one", "train": {**cfg["train"], "batch_size": 16}}, quiet=True)
    assert max_gap(final_weights(run_dir), final_weights(one.run_dir)) <= TOL
