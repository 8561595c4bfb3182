"""The TensorFlow backend beyond one device: MirroredStrategy over 2 logical CPUs, and 2 real processes.

Logical CPU devices exist only when they are configured before TensorFlow starts its runtime, so
those checks run in a fresh interpreter (:data:`MIRROR_SCRIPT`, with ``CROSSFRAME_TF_CPU_DEVICES=2``)
that prints what it measured as JSON; the assertions are made here. The multi-process run goes
through ``crossframe run --nproc-per-node 2`` (the core launcher; MultiWorkerMirroredStrategy
joined through the TF_CONFIG the backend writes) and is compared with one process training on the
doubled batch.
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
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("tensorflow")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

import crossframe  # noqa: E402
from crossframe.errors import CapabilityError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-5
B = 4  # rows per replica and micro-batch; one device takes 2 * B

MIRROR_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import crossframe
    from crossframe.backend import DistillSetup, TrainSetup, WorldInfo
    from crossframe.data.dataset import DataInfo
    from crossframe.models import build_model
    from crossframe_tensorflow.backend import TensorFlowBackend
    from crossframe_tensorflow.devices import tf

    BE = TensorFlowBackend()
    BE.capabilities()  # before the runtime starts: the logical CPUs can still be made
    out = {"replicas": {s: BE.local_replicas(WorldInfo(s), "cpu") for s in ("single", "data_parallel")}}
    out["logical_cpus"] = len(tf.config.list_logical_devices("CPU"))

    def world(strategy):
        return None if strategy == "single" else WorldInfo(strategy)

    def train(spec, weights, batches, strategy, **kw):
        state = BE.create_state(TrainSetup(spec, weights, world=world(strategy), **kw))
        for i, batch in enumerate(batches):
            state, metrics = BE.train_step(state, batch, 0.01 * (1 + i % 3))
        return state, {k: float(v) for k, v in BE.fetch(metrics).items()}

    def gap(a, b):
        return max(float(np.abs(np.asarray(a[k]) - np.asarray(b[k])).max()) for k in a)

    b = int(sys.argv[2])
    rng = np.random.default_rng(0)
    mlp = build_model("mlp", {"hidden": [16]}, DataInfo("classification", (8,), 3))
    w = mlp.init(1)
    steps = [{"x": rng.normal(size=(2 * b * 2, 8)).astype(np.float32), "y": rng.integers(0, 3, 2 * b * 2)}
             for _ in range(20)]
    kw = dict(optimizer="adamw", optimizer_params={"lr": 0.01, "weight_decay": 0.1}, device="cpu",
              grad_accum=2, clip_norm=0.5)
    states, metrics, exported = {}, {}, {}
    for strategy in ("single", "data_parallel"):
        states[strategy], metrics[strategy] = train(mlp, w, steps, strategy, **kw)
        exported[strategy] = BE.export_state(states[strategy])
    dp = states["data_parallel"]
    out["replicas_in_step"] = dp.replicas.count
    out["variable"] = [type(dp.model.params["layers.0.weight"]).__name__,
                       sorted({v.device.split("device:")[-1] for v in dp.model.params["layers.0.weight"].values})]
    out["mlp"] = {"weights": gap(exported["single"][0], exported["data_parallel"][0]),
                  "optimizer": gap(exported["single"][1], exported["data_parallel"][1]),
                  "loss": abs(metrics["single"]["loss"] - metrics["data_parallel"]["loss"]),
                  "grad_norm": abs(metrics["single"]["grad_norm"] - metrics["data_parallel"]["grad_norm"]),
                  "moved": gap(w, exported["single"][0])}
    out["traces"] = dp.train_fn.tracing_count()

    # eval and predict read the mirrored variables like plain ones
    ev = [BE.fetch(BE.eval_step(states[s], {"x": steps[0]["x"][:7], "y": steps[0]["y"][:7]})) for s in states]
    out["eval"] = {"loss": abs(float(ev[0]["loss_sum"]) - float(ev[1]["loss_sum"])),
                   "confusion_equal": bool(np.array_equal(ev[0]["confusion"], ev[1]["confusion"])),
                   "predict": float(np.abs(BE.predict(states["single"], steps[1]["x"][:5])
                                           - BE.predict(dp, steps[1]["x"][:5])).max())}
    # canonical load into a mirrored state reaches every replica's copy
    fresh = BE.create_state(TrainSetup(mlp, mlp.init(9), world=world("data_parallel"), **kw))
    BE.load_state(fresh, *exported["data_parallel"])
    copies = [c.numpy() for c in fresh.model.params["layers.0.weight"].values]
    out["load"] = max(float(np.abs(c - exported["data_parallel"][0]["layers.0.weight"]).max()) for c in copies)
    out["load_slots"] = gap(exported["data_parallel"][1], BE.export_state(fresh)[1])

    # pruning masks stay exact on every replica
    masks = {"layers.0.weight": (rng.random((8, 16)) > 0.5).astype(np.float32)}
    pruned = train(mlp, w, steps[:5], "data_parallel", masks=masks, **kw)[0]
    out["pruned_nonzero_where_masked"] = max(
        float(np.abs(c.numpy()[masks["layers.0.weight"] == 0]).max())
        for c in pruned.model.params["layers.0.weight"].values)

    # distillation: the teacher's term is a mean over the global batch too
    teach = dict(distill=DistillSetup(mlp, mlp.init(5), temperature=2.0, alpha=0.5))
    kd = {s: train(mlp, w, steps[:5], s, **kw, **teach) for s in ("single", "data_parallel")}
    out["distill"] = {"weights": gap(BE.export_state(kd["single"][0])[0], BE.export_state(kd["data_parallel"][0])[0]),
                      "kd": abs(kd["single"][1]["distill_loss"] - kd["data_parallel"][1]["distill_loss"])}

    # a language model: masked token loss over the global count of counted tokens, accumulation
    t, vocab = 8, 32
    gpt = build_model("gpt", {"n_layer": 1, "n_head": 2, "d_model": 16, "max_seq_len": t},
                      DataInfo("language_modeling", (t,), vocab))
    gw = gpt.init(2)
    lm = []
    for _ in range(6):
        ids = rng.integers(0, vocab, size=(2 * b * 2, t + 1))
        mask = (rng.random((2 * b * 2, t)) > 0.3).astype(np.float32)
        mask[:3] = 0.0  # rows that count for nothing, all on the first replica
        lm.append({"x": ids[:, :-1], "y": ids[:, 1:], "mask": mask})
    # sgd with momentum: the key bias's gradient is zero up to rounding noise, which adam would
    # scale up to eps-sized steps that differ with the summation order (a property of adam, not of
    # the replicas); sgd shows the gradients themselves agree
    lkw = dict(optimizer="sgd", optimizer_params={"lr": 0.05, "momentum": 0.9}, device="cpu", grad_accum=2)
    got = {s: train(gpt, gw, lm, s, **lkw) for s in ("single", "data_parallel")}
    out["gpt"] = {"weights": gap(BE.export_state(got["single"][0])[0], BE.export_state(got["data_parallel"][0])[0]),
                  "loss": abs(got["single"][1]["loss"] - got["data_parallel"][1]["loss"])}

    # through the runner: per-replica batch b on 2 logical CPUs
    cfg = json.loads(sys.argv[1])
    dp_run = crossframe.run({**cfg, "name": "mirrored", "strategy": "data_parallel"}, quiet=True)
    out["run_dir"] = str(dp_run.run_dir.resolve())
    print("RESULT " + json.dumps(out))
    """
)


def tiny_cfg(**train: Any) -> dict[str, Any]:
    """A 20-step MLP on synthetic data, trained by the tensorflow backend (per-replica batch ``B``)."""
    return {"backend": "tensorflow", "device": "cpu", "seed": 3,
            "data": {"name": "synthetic", "samples": 256, "features": 8, "classes": 3},
            "model": {"name": "mlp", "hidden": [16]},
            "train": {"steps": 20, "batch_size": B, "log_every": 5, "eval_every": 0, "grad_accum": 2,
                      "clip_norm": 1.0, "optimizer": {"name": "adamw", "lr": 0.01, "weight_decay": 0.01},
                      **train}}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CROSSFRAME_", "TF_CONFIG"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "core"), str(ROOT / "plugins"),
                                                      env.get("PYTHONPATH", "")]))
    return {**env, **extra}


def final_weights(run_dir: Path | str) -> dict[str, np.ndarray]:
    """The canonical weights of a run's latest checkpoint."""
    step = sorted((Path(run_dir) / "checkpoints").glob("step_*"), key=lambda p: int(p.name[5:]))[-1]
    return safetensors_numpy.load_file(str(step / "model.safetensors"))


def max_gap(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """The largest absolute difference between two sets of same-named arrays."""
    assert sorted(a) == sorted(b)
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One directory for this module's runs."""
    return tmp_path_factory.mktemp("tf_distributed")


@pytest.fixture(scope="module")
def mirrored(workspace: Path) -> dict[str, Any]:
    """Run :data:`MIRROR_SCRIPT` once with 2 logical CPU devices; its measurements as a dict."""
    proc = subprocess.run([sys.executable, "-c", MIRROR_SCRIPT, json.dumps(tiny_cfg()), str(B)], cwd=workspace,
                          env=_env(CROSSFRAME_TF_CPU_DEVICES="2"), capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


@pytest.fixture(scope="module")
def one_process(workspace: Path) -> Path:
    """The reference: one process, one device, batch ``2 * B`` (the run directory)."""
    cfg = tiny_cfg()
    result = crossframe.run({**cfg, "name": "one", "output_dir": str(workspace / "runs"),
                             "train": {**cfg["train"], "batch_size": 2 * B}}, quiet=True)
    assert result.steps == 20
    return result.run_dir


def test_two_logical_cpus_are_two_mirrored_replicas(mirrored: dict[str, Any]) -> None:
    assert mirrored["logical_cpus"] == 2 and mirrored["replicas_in_step"] == 2
    assert mirrored["replicas"] == {"single": 1, "data_parallel": 2}
    assert mirrored["variable"] == ["MirroredVariable", ["CPU:0", "CPU:1"]]
    assert mirrored["traces"] == 1  # one tf.function, traced once for the whole run


def test_two_replicas_with_batch_b_train_like_one_device_with_batch_2b(mirrored: dict[str, Any]) -> None:
    got = mirrored["mlp"]  # adamw with weight decay, grad_accum 2, clipping on the global norm, 20 steps
    assert got["moved"] > 1e-2  # training did change the weights
    assert got["weights"] <= TOL and got["optimizer"] <= TOL
    assert got["loss"] <= TOL and got["grad_norm"] <= TOL
    assert mirrored["gpt"]["weights"] <= TOL and mirrored["gpt"]["loss"] <= TOL


def test_eval_predict_load_masks_and_a_teacher_on_mirrored_variables(mirrored: dict[str, Any]) -> None:
    assert mirrored["eval"]["loss"] <= TOL and mirrored["eval"]["confusion_equal"]
    assert mirrored["eval"]["predict"] <= TOL
    assert mirrored["load"] == 0.0 and mirrored["load_slots"] == 0.0
    assert mirrored["pruned_nonzero_where_masked"] == 0.0
    assert mirrored["distill"]["weights"] <= TOL and mirrored["distill"]["kd"] <= TOL


def test_the_runner_gives_each_replica_batch_size_rows(mirrored: dict[str, Any], one_process: Path) -> None:
    assert max_gap(final_weights(mirrored["run_dir"]), final_weights(one_process)) <= TOL


def test_two_worker_processes_train_like_one_with_the_doubled_batch(workspace: Path, one_process: Path) -> None:
    (workspace / "cfg.json").write_text(json.dumps({**tiny_cfg(), "output_dir": "runs"}))
    proc = subprocess.run([sys.executable, "-m", "crossframe", "run", "cfg.json", "--backend", "tensorflow",
                           "--strategy", "data_parallel", "--nproc-per-node", "2", "--set", "name=two"],
                          cwd=workspace, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert max_gap(final_weights(workspace / "runs" / "two"), final_weights(one_process)) <= TOL


def test_fully_sharded_fails_before_the_run_in_one_line(workspace: Path) -> None:
    from crossframe_tensorflow.backend import TensorFlowBackend

    assert TensorFlowBackend().capabilities().strategies == ("single", "data_parallel")
    out = workspace / "refused"
    with pytest.raises(CapabilityError) as info:
        crossframe.run({**tiny_cfg(), "output_dir": str(out), "strategy": "fully_sharded"}, quiet=True)
    message = str(info.value)
    assert message.startswith("strategy: 'fully_sharded' requested, but backend 'tensorflow'") and "\n" not in message
    assert "data_parallel" in message and not out.exists()  # nothing was started or written


def test_tf_config_names_every_worker_and_this_task() -> None:
    from crossframe.backend import WorldInfo
    from crossframe.errors import DistributedError
    from crossframe_tensorflow.distributed import tf_config

    world = WorldInfo("data_parallel", rank=2, world_size=3, master_addr="10.0.0.5", master_port=40000)
    assert tf_config(world) == {"cluster": {"worker": ["10.0.0.5:40000", "10.0.0.5:40001", "10.0.0.5:40002"]},
                                "task": {"type": "worker", "index": 2}}
    with pytest.raises(DistributedError, match="master_port"):
        tf_config(WorldInfo("data_parallel", world_size=4, master_port=65534))
    with pytest.raises(DistributedError, match=r"^CROSSFRAME_TF_NODE_HOSTS: 3 node addresses"):
        tf_config(WorldInfo("data_parallel", world_size=4, local_world_size=2), {"CROSSFRAME_TF_NODE_HOSTS": "a,b,c"})


@given(nodes=st.integers(1, 4), per_node=st.integers(1, 4), port=st.integers(1024, 60000), data=st.data())
def test_tf_config_across_machines_puts_each_worker_on_its_node(nodes: int, per_node: int, port: int,
                                                               data: st.DataObject) -> None:
    from crossframe.backend import WorldInfo
    from crossframe_tensorflow.distributed import tf_config

    rank = data.draw(st.integers(0, nodes * per_node - 1))
    hosts = [f"10.0.0.{n + 1}" for n in range(nodes)]
    world = WorldInfo("data_parallel", rank=rank, world_size=nodes * per_node, local_rank=rank % per_node,
                      local_world_size=per_node, master_addr=hosts[0], master_port=port)
    config = tf_config(world, {"CROSSFRAME_TF_NODE_HOSTS": ",".join(hosts)})
    workers = config["cluster"]["worker"]
    assert config["task"] == {"type": "worker", "index": rank}
    assert len(set(workers)) == len(workers) == nodes * per_node  # every worker its own address
    assert workers[rank] == f"{hosts[rank // per_node]}:{port + rank}"  # this process listens on its own node
    assert [w.split(":")[0] for w in workers] == [h for h in hosts for _ in range(per_node)]


def test_a_worker_dying_mid_run_stops_the_job_in_one_line(workspace: Path) -> None:
    cfg = {**tiny_cfg(steps=12, checkpoint_every=2), "output_dir": "runs"}
    (workspace / "fault.json").write_text(json.dumps(cfg))
    proc = subprocess.run([sys.executable, "-m", "crossframe", "run", "fault.json", "--backend", "tensorflow",
                           "--strategy", "data_parallel", "--nproc-per-node", "2", "--set", "name=fault",
                           "--set", "launch.collective_timeout_s=30"],
                          cwd=workspace, env=_env(CROSSFRAME_FAULT_EXIT="1:3"), capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: worker rank 1 of 2 exited with code 3")
    # rank 0 either saw the broken all-reduce (one line, no traceback) or was stopped by the launcher
    assert "Traceback" not in proc.stderr
    assert (workspace / "runs" / "fault" / "checkpoints" / "step_2").is_dir()  # the last good checkpoint stays


def test_an_interrupt_stops_both_workers_at_one_step(workspace: Path) -> None:
    """MultiWorkerMirroredStrategy's ranks agree at the log boundary after the interrupt (10, since rank 1
    has it after step 7) through a gather, save that step once and exit 130 in one line."""
    (workspace / "ctrlc.json").write_text(json.dumps({**tiny_cfg(), "output_dir": "runs"}))
    proc = subprocess.run([sys.executable, "-m", "crossframe", "run", "ctrlc.json", "--backend", "tensorflow",
                           "--strategy", "data_parallel", "--nproc-per-node", "2", "--set", "name=ctrlc", "-q"],
                          cwd=workspace, env=_env(CROSSFRAME_FAULT_SIGNAL="1:7"), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 130, (proc.stdout + proc.stderr)[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "interrupted after step 10: checkpoint written to 'runs/ctrlc/checkpoints/step_10'; "
        "continue with --resume runs/ctrlc")
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in (workspace / "runs" / "ctrlc" / "checkpoints").glob("step_*")) == ["step_10"]
