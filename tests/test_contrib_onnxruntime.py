"""contrib/crossframe-onnxruntime installs with pip into a fresh virtual environment and works.

The fresh venv sees this interpreter's packages (crossframe, torch, numpy, onnx, onnxruntime,
setuptools) through a ``.pth`` line, so nothing is downloaded; the plugin itself is built from
a copy of its folder and installed with ``--no-deps --no-build-isolation`` as a user would
install it. Then, through the CLI in that venv: a torch run's checkpoint evaluated with
``--backend onnxruntime`` equals its native evaluation (mlp and cnn), the plugin is listed,
and a training run on it is refused in one line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("onnx", reason="onnx is not installed (it is in crossframe's dev extras)")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (it is in crossframe's dev extras)")

PLUGIN_DIR = Path(__file__).resolve().parents[1] / "contrib" / "crossframe-onnxruntime"
STEPS = 60
CNN = "model={name: cnn, channels: [4], hidden: 8}"


def _bin(venv: Path, name: str) -> Path:
    return venv / ("Scripts" if os.name == "nt" else "bin") / name


def _env() -> dict[str, str]:
    """This environment without anything that would leak the outer venv or crossframe's flags in."""
    drop = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PIP_REQUIRE_VIRTUALENV")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("CROSSFRAME_")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PYTHONDONTWRITEBYTECODE="1")
    return env


def _call(args: list[str | Path], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=timeout, check=False)


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (f"{' '.join(result.args)} exited {result.returncode}\n"
                                    f"--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}")
    return result.stdout


def _site_packages(venv: Path) -> Path:
    """The fresh venv's own purelib, as its interpreter reports it."""
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    return Path(_ok(_call([_bin(venv, "python"), "-c", code], venv, timeout=60)).strip())


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the plugin pip-installed from (a copy of) its folder; crossframe from here."""
    root = tmp_path_factory.mktemp("onnxruntime-venv")
    source = shutil.copytree(PLUGIN_DIR, root / "src", ignore=shutil.ignore_patterns(
        "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache"))  # build in the copy, not the checkout
    env_dir = root / "venv"
    _ok(_call([sys.executable, "-m", "venv", "--without-pip", env_dir], root, timeout=120))
    outer = sysconfig.get_paths()["purelib"]
    site = _site_packages(env_dir)
    assert site.is_dir(), f"no site-packages at {site}"
    (site / "outer_venv.pth").write_text(f"import site; site.addsitedir({outer!r})\n")
    python = _bin(env_dir, "python")
    # pip (and setuptools / wheel for the build) come from the outer venv through the .pth line
    _ok(_call([python, "-m", "pip", "install", "--no-index", "--no-deps", "--no-build-isolation", "--quiet",
               source], root))
    # the console script pip would have written had crossframe itself been installed here
    script = _bin(env_dir, "crossframe")
    script.write_text(f"#!{python}\nimport sys\nfrom crossframe.cli.main import entry\n\n"
                      "if __name__ == '__main__':\n    sys.exit(entry())\n")
    script.chmod(0o755)
    located = _ok(_call([python, "-c", "import crossframe_onnxruntime as m, crossframe as c; "
                                       "print(m.__file__); print(c.__file__)"], root)).split()
    assert Path(located[0]).is_relative_to(site), f"the plugin was imported from {located[0]}, not the venv"
    return env_dir


def _crossframe(venv: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return _call([_bin(venv, "crossframe"), *args], cwd)


def _eval(venv: Path, cwd: Path, run: str, *extra: str) -> dict[str, Any]:
    out = _ok(_crossframe(venv, cwd, "eval", run, "--json", *extra))
    return json.loads(out.strip().splitlines()[-1])


def _assert_same_eval(venv: Path, cwd: Path, run: str) -> None:
    native = _eval(venv, cwd, run)
    onnx = _eval(venv, cwd, run, "--backend", "onnxruntime")
    assert native["backend"] == "torch" and onnx["backend"] == "onnxruntime", (native, onnx)
    assert native["step"] == onnx["step"] == STEPS, (native, onnx)
    assert abs(native["val/loss"] - onnx["val/loss"]) <= 1e-5, (native, onnx)
    assert native["val/accuracy"] == onnx["val/accuracy"], (native, onnx)
    for key in ("val/precision", "val/recall", "val/f1"):
        assert abs(native[key] - onnx[key]) <= 1e-12, (key, native, onnx)


def test_plugin_is_listed_from_its_distribution(venv: Path, tmp_path: Path) -> None:
    rows = json.loads(_ok(_crossframe(venv, tmp_path, "plugins", "--json")))
    row = next((r for r in rows if r["name"] == "onnxruntime"), None)
    assert row is not None, f"onnxruntime not listed: {[r['name'] for r in rows]}"
    assert row["status"] == "loaded", row
    assert (row["distribution"], row["version"], row["module"]) == (
        "crossframe-onnxruntime", "0.1.0", "crossframe_onnxruntime"), row
    assert row["components"].get("backend") == ["onnxruntime"], row
    assert row["components"].get("exporter") == ["onnx-canonical"], row


def test_mlp_eval_on_onnxruntime_matches_torch(venv: Path, tmp_path: Path) -> None:
    _ok(_crossframe(venv, tmp_path, "run", "digits-mlp", "--quiet", "--set", f"train.steps={STEPS}"))
    _assert_same_eval(venv, tmp_path, "runs/digits-mlp")


def test_cnn_eval_on_onnxruntime_matches_torch(venv: Path, tmp_path: Path) -> None:
    _ok(_crossframe(venv, tmp_path, "run", "digits-mlp", "--quiet", "--set", f"train.steps={STEPS}", "--set", CNN,
                    "--set", "name=digits-cnn"))
    _assert_same_eval(venv, tmp_path, "runs/digits-cnn")


def test_training_on_onnxruntime_is_refused_in_one_line(venv: Path, tmp_path: Path) -> None:
    result = _crossframe(venv, tmp_path, "run", "digits-mlp", "--backend", "onnxruntime", "--set", "train.steps=1")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert len(lines) == 1 and "cannot train" in lines[0], result.stderr
    assert not (tmp_path / "runs").exists(), "a refused run must not create its run directory"
