"""sha256 manifests on checkpoints and exports: written on save, checked on load, one line on a mismatch."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from crossframe.checkpoint import load_checkpoint, save_checkpoint
from crossframe.errors import CheckpointError
from crossframe.integrity import MANIFEST, IntegrityError, read_manifest, verify_manifest, write_manifest


def _save(root: Path) -> Path:
    weights = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    return save_checkpoint(root, 3, weights, {"m": np.zeros(2, np.float32)}, {"backend": "x"}, keep=2)


def test_checkpoint_manifest_lists_every_file_with_its_sha256(tmp_path: Path) -> None:
    where = _save(tmp_path / "checkpoints")
    digests = read_manifest(where)
    assert digests is not None
    assert set(digests) == {"model.safetensors", "optimizer.safetensors", "state.json"}
    for name, digest in digests.items():
        assert hashlib.sha256((where / name).read_bytes()).hexdigest() == digest
    assert load_checkpoint(where).weights["w"][1, 2] == 5


def test_a_tampered_checkpoint_is_refused_in_one_line_naming_the_file(tmp_path: Path) -> None:
    where = _save(tmp_path / "checkpoints")
    with (where / "model.safetensors").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path)
    message = str(info.value)
    assert "\n" not in message and "model.safetensors" in message and "sha256" in message


def test_a_checkpoint_written_before_manifests_still_loads(tmp_path: Path) -> None:
    where = _save(tmp_path / "checkpoints")
    (where / MANIFEST).unlink()
    assert verify_manifest(where) is False
    assert load_checkpoint(where).step == 3


def test_a_missing_listed_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(b"abc")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.bin").write_bytes(b"def")
    assert set(write_manifest(tmp_path)) == {"a.bin", "sub/b.bin"}
    assert verify_manifest(tmp_path) is True
    (tmp_path / "sub" / "b.bin").unlink()
    with pytest.raises(IntegrityError, match=r"b\.bin: listed in manifest\.json but missing"):
        verify_manifest(tmp_path)
    assert verify_manifest(tmp_path, only=["a.bin"]) is True


def test_a_tampered_onnx_export_is_refused_before_onnx_runtime_opens_it(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from crossframe.export.onnx_runtime import load_onnx

    path = tmp_path / "model.onnx"
    path.write_bytes(b"not really onnx")
    write_manifest(tmp_path)
    path.write_bytes(b"not really onnx!")
    with pytest.raises(IntegrityError, match=r"model\.onnx: sha256 does not match"):
        load_onnx(path)


def test_diagnostics_go_to_the_crossframe_logger(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    where = _save(tmp_path / "checkpoints")
    (where / MANIFEST).unlink()
    with caplog.at_level("DEBUG", logger="crossframe"):
        load_checkpoint(where)
    records = [r for r in caplog.records if r.name == "crossframe.integrity"]
    assert records and "written before manifests" in records[0].getMessage()
