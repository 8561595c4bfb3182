"""Augmentation in the numpy pipeline: what each one does, config errors, and the same batches on
every backend and after a resume."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

import crossframe
from crossframe import hookimpl
from crossframe.config.loading import load_config
from crossframe.data.augment import augment_batch, parse
from crossframe.errors import ConfigError
from crossframe.plugins import get_plugin_manager


def _images(n: int = 64) -> np.ndarray:
    return np.random.default_rng(1).random((n, 6, 5, 2)).astype(np.float32)


def test_flip_mirrors_about_half_of_the_images() -> None:
    x = _images()
    out = augment_batch({"x": x, "y": np.zeros(len(x))}, parse([{"flip": "horizontal"}]), seed=0, step=3)["x"]
    flipped = np.array([np.array_equal(o, xi[:, ::-1]) for o, xi in zip(out, x, strict=True)])
    kept = np.array([np.array_equal(o, xi) for o, xi in zip(out, x, strict=True)])
    assert np.all(flipped ^ kept) and 16 <= flipped.sum() <= 48
    vertical = augment_batch({"x": x}, parse([{"flip": "vertical"}]), seed=0, step=3)["x"]
    assert all(np.array_equal(v, xi[::-1]) or np.array_equal(v, xi) for v, xi in zip(vertical, x, strict=True))


def test_random_crop_is_a_shifted_window_of_the_zero_padded_image() -> None:
    x = _images(16)
    out = augment_batch({"x": x}, parse([{"random_crop": {"padding": 2}}]), seed=5, step=0)["x"]
    assert out.shape == x.shape
    for o, xi in zip(out, x, strict=True):
        padded = np.pad(xi, ((2, 2), (2, 2), (0, 0)))
        windows = [padded[dy:dy + 6, dx:dx + 5] for dy in range(5) for dx in range(5)]
        assert any(np.array_equal(o, w) for w in windows)


def test_noise_has_the_given_scale_and_token_mask_leaves_targets_alone() -> None:
    x = np.zeros((200, 50), np.float32)
    out = augment_batch({"x": x}, parse([{"noise": 0.05}]), seed=1, step=9)["x"]
    assert out.dtype == np.float32 and abs(float(out.std()) - 0.05) < 0.005  # 10^4 draws: std error ~4e-4
    tokens = np.random.default_rng(2).integers(1, 100, (64, 32))
    batch = {"x": tokens, "y": np.roll(tokens, -1, axis=1)}
    masked = augment_batch(batch, parse([{"token_mask": {"rate": 0.25, "id": 0}}]), seed=1, step=0)
    share = float(np.mean(masked["x"] == 0))
    assert 0.2 < share < 0.3 and np.array_equal(masked["y"], batch["y"])
    assert np.all((masked["x"] == 0) | (masked["x"] == tokens))


def test_augmentation_is_a_pure_function_of_seed_and_step() -> None:
    x = _images(8)
    augs = parse([{"flip": "horizontal"}, {"random_crop": {"padding": 1}}, {"noise": 0.1}])
    a = augment_batch({"x": x}, augs, seed=4, step=11)["x"]
    assert np.array_equal(a, augment_batch({"x": x}, augs, seed=4, step=11)["x"])
    assert not np.array_equal(a, augment_batch({"x": x}, augs, seed=4, step=12)["x"])


@pytest.mark.parametrize(("entry", "message"), [
    ({"blur": 1}, "unknown augmentation 'blur'"),
    ({"random_crop": {"padding": 0}}, "random_crop: must be {padding: N}"),
    ({"flip": "diagonal"}, "flip: must be 'horizontal' or 'vertical'"),
])
def test_bad_augmentations_are_config_errors_naming_the_field(entry: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=r"train\.augment") as info:
        load_config({"train": {"augment": [entry]}})
    assert message in str(info.value) and "\n" not in str(info.value)


def test_image_augmentations_refuse_flat_inputs(workdir: Path, tiny) -> None:
    pytest.importorskip("torch")
    with pytest.raises(ConfigError, match=r"'flip' needs image batches \[B, H, W, C\]"):
        crossframe.run(tiny(steps=2, augment=[{"flip": "horizontal"}]), quiet=True)


class Recorder:
    def __init__(self, stop_at: int | None = None) -> None:
        self.stop_at, self.batches = stop_at, []

    @hookimpl
    def on_step_end(self, run, step, batch, logs):
        self.batches.append(hashlib.sha1(batch["x"].tobytes() + batch["y"].tobytes()).hexdigest())
        if step == self.stop_at:
            run.should_stop = True


def _recorded(config: dict, recorder: Recorder, resume: Path | None = None) -> crossframe.RunResult:
    manager = get_plugin_manager()
    manager.register(recorder, "augment-recorder")
    try:
        return crossframe.run(config, resume=resume, quiet=True) if resume is None else crossframe.run(
            resume=resume, quiet=True)
    finally:
        manager.unregister("augment-recorder")


AUGMENT = [{"flip": "horizontal"}, {"random_crop": {"padding": 2}}, {"noise": 0.05}]


def _images_config(backend: str, **train) -> dict:
    return {"backend": backend, "device": "cpu", "seed": 2, "data": {"name": "digits"},
            "model": {"name": "cnn", "channels": [2], "hidden": 8},
            "train": {"steps": 6, "batch_size": 16, "log_every": 3, "augment": AUGMENT,
                      "optimizer": {"name": "sgd", "lr": 0.05}, **train}}


@pytest.mark.slow
def test_every_backend_sees_the_same_augmented_batches_and_so_does_a_resumed_run(workdir: Path) -> None:
    hashes = {}
    for backend in ("torch", "jax", "tensorflow"):
        pytest.importorskip(backend)
        recorder = Recorder()
        _recorded({**_images_config(backend), "name": f"aug-{backend}"}, recorder)
        hashes[backend] = recorder.batches
    assert len(hashes["torch"]) == 6 and hashes["torch"] == hashes["jax"] == hashes["tensorflow"]
    first, second = Recorder(stop_at=3), Recorder()
    stopped = _recorded({**_images_config("torch", checkpoint_every=3), "name": "aug-halves"}, first)
    _recorded({}, second, resume=stopped.run_dir)
    assert first.batches + second.batches == hashes["torch"]
