"""Shared fixtures: a clean plugin manager per test, a working directory for runs, tiny configs."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from crossframe.threads import POOL_VARIABLES, thread_environment

settings.register_profile("ci", deadline=None, max_examples=25,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile("ci")

# One intra-op thread per test process, set before any framework is imported: pytest-xdist runs
# one worker per core, and a second thread per worker would only wait at barriers (crossframe.threads).
os.environ.update({k: v for k, v in thread_environment(1).items()
                   if k in (*POOL_VARIABLES, "TF_NUM_INTEROP_THREADS", "XLA_FLAGS")})
# MFU peaks are cached per machine; tests keep theirs apart from the user's cache.
os.environ.setdefault("CROSSFRAME_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"crossframe-tests-{os.getuid()}"))

for _flag in ("CROSSFRAME_STRICT_PLUGINS", "CROSSFRAME_DISABLE_PLUGIN_AUTOLOAD", "CROSSFRAME_PLUGINS",
              "CROSSFRAME_DISABLE_PLUGINS"):
    os.environ.pop(_flag, None)


@pytest.fixture(autouse=True)
def fresh_plugins() -> Any:
    """Each test starts from a freshly loaded plugin manager."""
    from crossframe import plugins

    plugins._manager = None
    yield
    plugins._manager = None


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in a temporary directory so ``runs/`` lands there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory for plugin distributions (see ``tests/plugin_dists.py``), on sys.path for this test."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    return root


def tiny_config(**train: Any) -> dict[str, Any]:
    """A config that trains in well under a second: a small MLP on synthetic data."""
    cfg: dict[str, Any] = {
        "backend": "torch",
        "device": "cpu",
        "seed": 3,
        "data": {"name": "synthetic", "samples": 256, "features": 8, "classes": 3},
        "model": {"name": "mlp", "hidden": [16]},
        "train": {"steps": 20, "batch_size": 16, "log_every": 5,
                  "optimizer": {"name": "adamw", "lr": 0.01}, **train},
    }
    return cfg


@pytest.fixture
def tiny() -> Any:
    """The :func:`tiny_config` factory."""
    return tiny_config


def use_new_keys(directory: Path, monkeypatch: pytest.MonkeyPatch, sign: bool = True) -> dict[str, Path]:
    """Fresh keys in ``directory``, named by the environment as a user would: the AES key, and the signing
    key when ``sign``; every other key variable unset."""
    from crossframe.security.keys import KEY_FILE_ENV, SIGNING_KEY_ENV, VERIFY_KEY_ENV, write_new_keys

    for env in (KEY_FILE_ENV, SIGNING_KEY_ENV, VERIFY_KEY_ENV):
        monkeypatch.delenv(env, raising=False)
    paths = write_new_keys(directory)
    monkeypatch.setenv(KEY_FILE_ENV, str(paths["aes"]))
    if sign:
        monkeypatch.setenv(SIGNING_KEY_ENV, str(paths["signing"]))
    return paths
