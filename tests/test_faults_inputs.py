"""A corpus of bad input: malformed configs, corrupt checkpoints, hostile run paths, failing disks.

Every case asserts its exit code (2 for bad input, 1 for a failed run), that stderr is exactly one
line, and that no traceback is printed. Add a case here whenever a new bug is found.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossframe.checkpoint import MODEL_FILE, OPTIMIZER_FILE, STATE_FILE, load_checkpoint
from crossframe.cli.main import main
from crossframe.config.validation import _short

pytest.importorskip("torch")


def one_line_error(capsys: pytest.CaptureFixture, *words: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------------------------------- configs

ALIAS_BOMB = """\
a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h, *h]
data: {name: synthetic, junk: *i}
"""

BAD_CONFIGS: dict[str, tuple[str | bytes, tuple[str, ...]]] = {
    "binary.yaml": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", ("binary.yaml", "binary")),
    "nul.yaml": ("train:\x00 {steps: 3}\n", ("nul.yaml", "NUL")),
    "bomb.yaml": (ALIAS_BOMB, ("bomb.yaml", "expand to more than")),
    "loop.yaml": ("a: &a [1, *a]\n", ("loop.yaml", "refers to the value that contains it")),
    "huge-steps.yaml": ("train: {steps: 1e29}\n", ("train.steps",)),
    "huge-steps.json": ('{"train": {"steps": 1e18}}', ("train.steps", "less than or equal")),
    "huge-epochs.toml": ("[train]\nepochs = 1_000_000_000_000\n", ("train.epochs",)),
    "dotdot.yaml": ("name: '..'\n", ("name:", "inside output_dir")),
    "dot.yaml": ("name: .\n", ("name:",)),
    "hidden.yaml": ("name: .tokens\n", ("name:",)),
    "slash.yaml": ("name: ../elsewhere\n", ("name:",)),
    "list.yaml": ("- 1\n- 2\n", ("list.yaml", "mapping")),
    "broken.yaml": ("train: {steps: [\n", ("broken.yaml", "not valid YAML")),
    "compress-param.yaml": ("compress: [{name: prune, sparsityy: 0.5}]\n", ("compress.0",)),
    "compress-name.yaml": ("compress: [{name: prunee}]\n", ("compress.0.name", "prune")),
    "export-name.yaml": ("export: [{name: onnxx}]\n", ("export.0.name", "onnx")),
    "export-param.yaml": ("export: [{name: onnx, opsett: 17}]\n", ("export.0",)),
    "long-value.yaml": ("train: {batch_size: " + "9" * 5000 + "x}\n", ("train.batch_size",)),
    "bad.toml": ("[train\nsteps = 3\n", ("bad.toml", "not valid TOML")),
}


@pytest.mark.parametrize("command", ["run", "config show"])
@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
def test_a_bad_config_is_one_line_and_exit_2(workdir: Path, name: str, command: str,
                                             capsys: pytest.CaptureFixture) -> None:
    content, words = BAD_CONFIGS[name]
    path = workdir / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert main([*command.split(), name, "-q"] if command == "run" else [*command.split(), name]) == 2
    line = one_line_error(capsys, *words)
    assert len(line) < 400  # a bounded prefix of any value, never the whole of it
    assert not (workdir / "runs").exists() or not any((workdir / "runs").iterdir())  # nothing trained
    assert not (workdir.parent / "config.yaml").exists()


def test_a_bad_override_value_is_bounded_too(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["config", "show", "--set", "train.steps=" + "[1, " * 200 + "1" + "]" * 200]) == 2
    assert len(one_line_error(capsys, "train.steps")) < 400


@given(st.recursive(st.none() | st.integers() | st.text(), lambda inner: st.lists(inner) | st.dictionaries(
    st.text(), inner), max_leaves=200))
def test_messages_format_only_a_bounded_prefix_of_a_value(value: object) -> None:
    assert len(_short(value)) <= 40


# ---------------------------------------------------------------------------------------- checkpoints

@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny run with checkpoints at steps 2 and 4, trained once and copied by each case."""
    from tests.conftest import tiny_config

    root = tmp_path_factory.mktemp("trained")
    cfg = {**tiny_config(steps=4, checkpoint_every=2), "name": "base", "output_dir": str(root / "runs")}
    cfg["model"] = {"name": "mlp", "hidden": [64]}  # its weights outweigh every text file a run writes
    (root / "cfg.json").write_text(json.dumps(cfg))
    assert main(["run", str(root / "cfg.json"), "-q"]) == 0
    return root / "runs" / "base"


def copy_run(trained: Path, workdir: Path) -> Path:
    run = workdir / "runs" / "case"
    shutil.copytree(trained, run)
    return run


def _truncate(run: Path) -> None:
    model = run / "checkpoints" / "step_4" / MODEL_FILE
    model.write_bytes(model.read_bytes()[:-17])


def _huge_header(run: Path) -> None:
    (run / "checkpoints" / "step_4" / MODEL_FILE).write_bytes((2**40).to_bytes(8, "little") + b"{}")


def _not_safetensors(run: Path) -> None:
    (run / "checkpoints" / "step_4" / MODEL_FILE).write_bytes(b"PK\x03\x04 a zip file, perhaps a pickle")


def _state(text: str) -> Callable[[Path], None]:
    return lambda run: (run / "checkpoints" / "step_4" / STATE_FILE).write_text(text)


def _rewrite(file: str, change: Callable[[dict[str, np.ndarray]], None]) -> Callable[[Path], None]:
    def apply(run: Path) -> None:
        from safetensors.numpy import load_file, save_file

        path = run / "checkpoints" / "step_4" / file
        tensors = load_file(str(path))
        change(tensors)
        save_file(tensors, str(path))
    return apply


def _wrong_slot(tensors: dict[str, np.ndarray]) -> None:
    key = next(k for k in tensors if k.startswith("exp_avg/"))
    tensors[key] = np.zeros((*tensors[key].shape[:-1], tensors[key].shape[-1] + 1), np.float32)


def _float64(tensors: dict[str, np.ndarray]) -> None:
    for key in tensors:
        tensors[key] = tensors[key].astype(np.float64)


def _latest(text: str) -> Callable[[Path], None]:
    return lambda run: (run / "checkpoints" / "latest").write_text(text)


def _escape(run: Path) -> None:
    outside = run.parent / "outside"
    shutil.copytree(run / "checkpoints" / "step_4", outside / "step_4")
    (run / "checkpoints" / "step_9").symlink_to(outside / "step_4")
    (run / "checkpoints" / "latest").write_text("step_9\n")


BAD_CHECKPOINTS: dict[str, tuple[Callable[[Path], None], tuple[str, ...]]] = {
    "truncated": (_truncate, (MODEL_FILE, "truncated")),
    "huge-header": (_huge_header, (MODEL_FILE, "header")),
    "not-safetensors": (_not_safetensors, (MODEL_FILE,)),
    "state-list": (_state("[1, 2]"), (STATE_FILE, "JSON object")),
    "state-no-step": (_state('{"backend": "torch"}'), (STATE_FILE, "'step'")),
    "state-bad-step": (_state('{"step": "four"}'), (STATE_FILE, "'step'")),
    "state-not-json": (_state("{oops"), (STATE_FILE, "not valid JSON")),
    "slot-shape": (_rewrite(OPTIMIZER_FILE, _wrong_slot), ("exp_avg/", "shape")),
    "float64": (_rewrite(MODEL_FILE, _float64), ("float64", "not cast")),
    "latest-outside": (_latest("../../../../etc\n"), ("latest", "checkpoint name")),
    "latest-dangling": (_latest("step_99\n"), ("latest", "step_99", "missing")),
    "latest-binary": (lambda run: (run / "checkpoints" / "latest").write_bytes(b"\xff\x00" * 5000), ("latest",)),
    "latest-symlink-escape": (_escape, ("step_9", "outside")),
}


@pytest.mark.parametrize("command", ["resume", "eval"])
@pytest.mark.parametrize("case", sorted(BAD_CHECKPOINTS))
def test_a_bad_checkpoint_is_one_line_and_exit_2(workdir: Path, trained: Path, case: str, command: str,
                                                 capsys: pytest.CaptureFixture) -> None:
    run = copy_run(trained, workdir)
    damage, words = BAD_CHECKPOINTS[case]
    damage(run)
    # a checkpoint written before manifests existed: the file checks themselves must catch the damage
    # (with its manifest, the sha256 check names the file first: tests/test_integrity.py)
    for manifest in (run / "checkpoints").glob("step_*/manifest.json"):
        manifest.unlink()
    capsys.readouterr()
    args = (["run", "--resume", str(run), "--set", "train.steps=6", "-q"] if command == "resume"
            else ["eval", str(run)])
    if command == "eval" and case == "slot-shape":
        assert main(args) == 0  # evaluation reads no optimizer state
        return
    assert main(args) == 2
    line = one_line_error(capsys, *words)
    assert len(line) < 400


@pytest.mark.parametrize("path", ["missing-dir", "a-file.txt", "empty-dir"])
def test_a_bad_resume_path_is_one_line_and_exit_2(workdir: Path, path: str, capsys: pytest.CaptureFixture) -> None:
    (workdir / "a-file.txt").write_text("hello")
    (workdir / "empty-dir").mkdir()
    assert main(["run", "--resume", path, "-q"]) == 2
    one_line_error(capsys, path)


def test_a_missing_latest_falls_back_to_the_newest_complete_checkpoint(workdir: Path, trained: Path) -> None:
    run = copy_run(trained, workdir)
    (run / "checkpoints" / "latest").unlink()  # killed between the rename and the pointer write
    (run / "checkpoints" / "step_abc").mkdir()  # not a checkpoint name: ignored, not a crash
    assert load_checkpoint(run).step == 4


def test_stale_temporaries_of_a_killed_save_are_removed_on_the_next_start(workdir: Path, trained: Path) -> None:
    run = copy_run(trained, workdir)
    stale = [run / "checkpoints" / ".step_6.abc123.tmp", run / "checkpoints" / ".step_4.old"]
    for path in stale:
        path.mkdir()
        (path / MODEL_FILE).write_bytes(b"half")
    assert main(["run", "--resume", str(run), "--set", "train.steps=6", "-q"]) == 0
    assert not any(path.exists() for path in stale)
    assert load_checkpoint(run).step == 6


def test_a_full_disk_is_one_line_exit_1_and_the_previous_checkpoint_survives(workdir: Path, trained: Path) -> None:
    run = copy_run(trained, workdir)
    (run / "metrics.jsonl").unlink()  # only the checkpoint may reach the size limit below
    before = (run / "checkpoints" / "step_4" / MODEL_FILE).read_bytes()
    texts = [p for p in run.rglob("*") if p.is_file() and p.suffix in (".yaml", ".json")]
    assert max(p.stat().st_size for p in texts) < len(before) - 1  # the limit below stops the checkpoint first
    code = ("import resource, signal, sys\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"  # writes past the limit fail with EFBIG
            "from crossframe.cli.main import main\n"
            "import torch\n"
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({len(before) - 1}, resource.RLIM_INFINITY))\n"
            "sys.exit(main(sys.argv[1:]))\n")
    # resource metrics off: their longer metrics.jsonl lines would reach the size limit before the checkpoint
    proc = subprocess.run([sys.executable, "-c", code, "run", "--resume", str(run), "--set", "train.steps=6",
                           "--set", "train.resource_metrics=false", "-q"],
                          capture_output=True, text=True, cwd=workdir, env={**os.environ})
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "could not write checkpoint" in lines[0] and "previous checkpoint is intact" in lines[0]
    assert load_checkpoint(run).step == 4
    assert (run / "checkpoints" / "step_4" / MODEL_FILE).read_bytes() == before
    assert not list((run / "checkpoints").glob(".step_*"))


def test_a_file_size_limit_hit_before_the_checkpoint_is_one_line(workdir: Path, trained: Path) -> None:
    """``ulimit -f`` (EFBIG) stops the first write, config.yaml of a new run: one line naming the file."""
    code = ("import resource, signal, sys\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "from crossframe.cli.main import main\n"
            "import torch\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (64, resource.RLIM_INFINITY))\n"
            "sys.exit(main(sys.argv[1:]))\n")
    proc = subprocess.run([sys.executable, "-c", code, "run", str(trained.parent.parent / "cfg.json"),
                           "--set", "name=limited", "-q"], capture_output=True, text=True, cwd=workdir,
                          env={**os.environ})
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "File too large" in lines[0] or "config.yaml" in lines[0], lines[0]
