"""Encrypted exports: with ``security.encrypt`` an ONNX file and a torch.export program are sealed in
memory before they are written, and ONNX Runtime (or torch) opens them from decrypted bytes, never
from plaintext on the disk; without the key, with the wrong key or a flipped byte they are refused in
one line."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

import crossframe
from crossframe.errors import CheckpointError
from crossframe.export.base import ExportArtifact
from crossframe.export.onnx_runtime import OnnxRunner
from crossframe.export.verify import DEFAULT_TOLERANCE
from crossframe.security import Protection, SecurityError, protecting
from crossframe.security.artifacts import artifact_bytes, refuse_unsealable
from crossframe.security.keys import KEY_FILE_ENV, SIGNING_KEY_ENV, VERIFY_KEY_ENV, read_aes_key, write_new_keys
from crossframe.security.sealing import is_sealed
from crossframe.serve.loading import load_served_model


@pytest.fixture
def keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A fresh AES key named by the environment; no signing (this file is about encryption)."""
    for env in (KEY_FILE_ENV, SIGNING_KEY_ENV, VERIFY_KEY_ENV):
        monkeypatch.delenv(env, raising=False)
    paths = write_new_keys(tmp_path / "keys")
    monkeypatch.setenv(KEY_FILE_ENV, str(paths["aes"]))
    return paths


def every_file(*roots: Path) -> list[Path]:
    """Every regular file under ``roots``."""
    return [p for root in roots for p in root.rglob("*") if p.is_file()]


@pytest.mark.slow
def test_encrypted_exports_open_from_memory_with_the_key_and_are_refused_without_it(
        workdir: Path, tiny: Any, keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    scratch = workdir / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # anything staged through tempfile lands here
    cfg = {**tiny(steps=5), "name": "enc", "security": {"encrypt": True},
           "export": [{"name": "onnx"}, {"name": "torch-export"}]}
    run_dir = crossframe.run(cfg, quiet=True).run_dir
    onnx_file = run_dir / "exports" / "onnx-torch" / "model.onnx"
    program = run_dir / "exports" / "torch-export-torch" / "model.pt2"
    assert is_sealed(onnx_file) and is_sealed(program)

    import onnx
    from onnx import numpy_helper

    plain = artifact_bytes(onnx_file)  # decrypted in memory
    model = onnx.load_from_string(plain)
    weight = max((numpy_helper.to_array(t) for t in model.graph.initializer), key=lambda a: a.size)
    assert weight.size >= 16
    secret = weight.tobytes()
    for path in every_file(workdir):  # neither the graph nor a weight ever reached the disk in plain text
        data = path.read_bytes()
        assert secret not in data, f"{path} holds an exported weight in plain text"
        assert plain[:64] not in data, f"{path} holds the exported graph in plain text"

    served = load_served_model(run_dir, engine="onnx")  # serve: ONNX Runtime on the decrypted bytes
    assert served.engine == "onnx"
    from crossframe.export.registry import BackendExporter, ExportParams

    native = BackendExporter("torch-export", "torch-export", ExportParams()).load(
        ExportArtifact("torch-export", program, "torch", "torch-export", {"input_dtype": "float32"}))
    x = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    a, b = served.predict(x), native(x)
    assert a.shape == b.shape == (5, 3)
    # the export check's own bound: two runtimes on the same float32 weights (DEFAULT_TOLERANCE, scaled)
    assert np.max(np.abs(a - b)) <= DEFAULT_TOLERANCE * max(1.0, float(np.max(np.abs(b))))

    monkeypatch.delenv(KEY_FILE_ENV)
    with pytest.raises(SecurityError, match="is encrypted: needs the encryption key"):
        load_served_model(run_dir / "exports" / "onnx-torch", engine="onnx")  # the run's checkpoint first
    with pytest.raises(SecurityError, match=r"model\.onnx' is encrypted: needs the encryption key"):
        OnnxRunner(onnx_file)
    with pytest.raises(SecurityError, match=r"model\.pt2' is encrypted"):
        native_again = BackendExporter("torch-export", "torch-export", ExportParams())
        native_again.load(ExportArtifact("torch-export", program, "torch", "torch-export", {}))
    wrong = workdir / "wrong.key"
    wrong.write_text(os.urandom(32).hex())
    monkeypatch.setenv(KEY_FILE_ENV, str(wrong))
    with pytest.raises(SecurityError, match="cannot be decrypted: wrong key"):
        OnnxRunner(onnx_file)

    monkeypatch.setenv(KEY_FILE_ENV, str(keys["aes"]))
    loose = workdir / "loose" / "model.onnx"  # a copy without its manifest: only AES-GCM guards it
    loose.parent.mkdir()
    shutil.copy(onnx_file, loose)
    blob = bytearray(loose.read_bytes())
    blob[len(blob) // 2] ^= 0x04
    loose.write_bytes(bytes(blob))
    with pytest.raises(SecurityError, match="cannot be decrypted: wrong key, or the file was changed"):
        OnnxRunner(loose)
    onnx_file.write_bytes(bytes(blob))  # in place, the manifest catches it first
    with pytest.raises(CheckpointError, match="sha256 does not match"):
        OnnxRunner(onnx_file)


def test_quantised_deployments_are_refused_when_encrypting(workdir: Path, tiny: Any, keys: dict[str, Path]) -> None:
    """ONNX Runtime's quantiser reads and writes model files: under encryption it is one line, not plaintext."""
    cfg = {**tiny(steps=2), "name": "enc-int8", "security": {"encrypt": True},
           "export": [{"name": "onnx-int8-dynamic"}]}
    with pytest.raises(SecurityError, match=r"^export\.0\.name: 'onnx-int8-dynamic': cannot be encrypted"):
        crossframe.run(cfg, quiet=True)
    assert not list(workdir.rglob("*.onnx"))
    refuse_unsealable("export: saved-model", "not encrypting: nothing happens")
    with protecting(Protection(key=read_aes_key(keys["aes"]))), \
            pytest.raises(SecurityError, match=r"^export: saved-model: cannot be encrypted \(TensorFlow"):
        refuse_unsealable("export: saved-model", "TensorFlow loads a SavedModel only from files")
