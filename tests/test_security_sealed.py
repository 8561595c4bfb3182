"""Plaintext never on the disk: with ``security.encrypt`` an ONNX file and a torch.export program are
sealed in memory before they are written, and ONNX Runtime (or torch) opens them from decrypted
bytes; without the key, with the wrong key or a flipped byte they are refused in one line. A token
store is encrypted as it streams out, watched file by file while it is written."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

import crossframe
from crossframe.errors import CheckpointError
from crossframe.export.base import ExportArtifact
from crossframe.export.onnx_runtime import OnnxRunner
from crossframe.export.verify import DEFAULT_TOLERANCE
from crossframe.security import Protection, SecurityError, protecting
from crossframe.security.artifacts import artifact_bytes, refuse_unsealable
from crossframe.security.keys import KEY_FILE_ENV, read_aes_key
from crossframe.security.sealing import SealingWriter, is_sealed, read_sealed, unseal
from crossframe.serve.loading import load_served_model
from tests.conftest import use_new_keys


@pytest.fixture
def keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A fresh AES key named by the environment; no signing (this file is about encryption)."""
    return use_new_keys(tmp_path / "keys", monkeypatch, sign=False)


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
    """ONNX Runtime's quantiser reads and writes model files: under encryption it is one line, not plaintext,
    before any training."""
    cfg = {**tiny(steps=2), "name": "enc-int8", "security": {"encrypt": True},
           "export": [{"name": "onnx-int8-dynamic"}]}
    with pytest.raises(SecurityError, match=r"^export\.0\.name: 'onnx-int8-dynamic': cannot be encrypted"):
        crossframe.run(cfg, quiet=True)
    assert not (workdir / "runs").exists()
    refuse_unsealable("export: saved-model", "not encrypting: nothing happens")
    with protecting(Protection(key=read_aes_key(keys["aes"]))), \
            pytest.raises(SecurityError, match=r"^export: saved-model: cannot be encrypted \(TensorFlow"):
        refuse_unsealable("export: saved-model", "TensorFlow loads a SavedModel only from files")


def test_a_sealed_token_store_never_puts_plaintext_on_the_disk(tmp_path: Path, keys: dict[str, Path],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The store's directory and the temporary directory are scanned while ``prepare`` streams (the
    documents come from a generator that looks before each batch), and after: no document text, no
    run of its token ids (as the store's uint16) and no document id is ever in any file, temporary or
    final; the sealed store still opens to exactly the plain store's tokens."""
    from crossframe.text.corpus import Document
    from crossframe.text.store import TokenStore, prepare
    from crossframe.text.tokenizers import BytesTokenizer

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    tokenizer = BytesTokenizer()
    # long enough (about 4 KB of tokens each) that buffered plain writes would reach the files mid-stream
    docs = [Document(f"patient-{i:03d}", f"confidential record {i:03d}: diagnosis withheld. " * 40)
            for i in range(60)]
    needles = [b"confidential", b"patient-0"]
    needles += [np.asarray(tokenizer.encode(d.text), np.uint16)[:12].tobytes() for d in docs[::7]]
    out = tmp_path / "store"
    seen: set[str] = set()

    def scan() -> None:
        for path in every_file(tmp_path):
            if path.is_relative_to(tmp_path / "keys"):
                continue
            seen.add(path.name)
            data = path.read_bytes()
            for needle in needles:
                assert needle not in data, f"{path} holds plaintext {needle[:16]!r}"

    def watched() -> Any:
        for i, doc in enumerate(docs):
            if i % 5 == 0:
                scan()
            yield doc

    with protecting(Protection(key=read_aes_key(keys["aes"]))):
        sealed = prepare(watched(), tokenizer, out, val_fraction=0.25, chunk_tokens=32, batch_chars=64)
    scan()
    assert any(".train.bin.tmp-" in name for name in seen)  # the scans saw the store's files mid-write
    assert not list(out.glob(".*tmp*"))  # nothing temporary is left
    plain = prepare(docs, tokenizer, tmp_path / "plain", val_fraction=0.25)
    reopened = TokenStore.open(out)
    for split in ("train", "val"):
        assert np.array_equal(sealed[split].tokens, plain[split].tokens)
        assert np.array_equal(reopened[split].offsets, plain[split].offsets)
        assert list(reopened[split].doc_ids()) == list(plain[split].doc_ids())


@given(chunks=st.lists(st.binary(max_size=300), max_size=8))
def test_a_streamed_seal_opens_as_one_sealed_file(tmp_path_factory: pytest.TempPathFactory,
                                                  chunks: list[bytes]) -> None:
    """What :class:`SealingWriter` writes in chunks is what :func:`seal` writes at once: the same
    format, bound to the same name, opened by :func:`read_sealed`; another name does not open it."""
    key = bytes(range(32))
    path = tmp_path_factory.mktemp("stream") / "train.bin"
    with SealingWriter(path, key, "train.bin") as handle:
        for chunk in chunks:
            assert handle.write(chunk) == len(chunk)
    assert read_sealed(path, key) == b"".join(chunks)
    with pytest.raises(SecurityError, match="wrong key"):
        unseal(path.read_bytes(), key, "val.bin", path)
