"""Encryption at rest and signed artefacts: an encrypted, signed run trains, resumes, evaluates and
exports with its keys; without the key, with the wrong key, with a flipped byte or a re-signed
manifest it is refused in one line (exit 2); runs written before any of this still load."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import crossframe
from crossframe.checkpoint import load_checkpoint, save_checkpoint
from crossframe.cli.main import main
from crossframe.security import Protection, SecurityError, protecting
from crossframe.security.keys import KEY_FILE_ENV, SIGNING_KEY_ENV, VERIFY_KEY_ENV, write_new_keys
from crossframe.security.sealing import MAGIC, seal, unseal
from crossframe.train.evaluate import evaluate
from tests.conftest import use_new_keys

KEY = bytes(range(32))


@pytest.fixture
def keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Fresh keys, named by the environment as a user would."""
    return use_new_keys(tmp_path / "keys", monkeypatch)


def secure_config(tiny: Any, name: str, **security: bool) -> dict[str, Any]:
    cfg = tiny(steps=10, checkpoint_every=5)
    return {**cfg, "name": name, "security": security or {"encrypt": True, "sign": True}}


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """Exit code and stderr (or stdout when stderr is empty) of ``crossframe ARGS``."""
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.err.strip() or captured.out.strip()


@given(data=st.binary(min_size=0, max_size=256), position=st.integers(min_value=0), bit=st.integers(0, 7))
def test_any_flipped_bit_fails_to_open(data: bytes, position: int, bit: int) -> None:
    blob = seal(data, KEY, "model.safetensors")
    assert unseal(blob, KEY, "model.safetensors", "x") == data
    changed = bytearray(blob)
    changed[position % len(blob)] ^= 1 << bit
    with pytest.raises(SecurityError):
        unseal(bytes(changed), KEY, "model.safetensors", "x")


def test_a_sealed_file_is_bound_to_its_name_and_key() -> None:
    blob = seal(b"weights", KEY, "model.safetensors")
    assert blob.startswith(MAGIC) and b"weights" not in blob
    with pytest.raises(SecurityError, match="wrong key"):
        unseal(blob, KEY, "optimizer.safetensors", "x")  # swapped into another file's place
    with pytest.raises(SecurityError, match="wrong key"):
        unseal(blob, bytes(32), "model.safetensors", "x")


@pytest.mark.slow
def test_encrypted_signed_run_resumes_evaluates_and_exports(workdir: Path, tiny: Any, keys: dict[str, Path]) -> None:
    first = crossframe.run({**secure_config(tiny, "enc"), "train": {**tiny()["train"], "steps": 5}}, quiet=True)
    weights = first.checkpoint / "model.safetensors"
    assert weights.read_bytes().startswith(MAGIC)
    assert b"layers.0.weight" not in weights.read_bytes()  # not even the tensor names are readable
    assert (first.checkpoint / "manifest.sig").is_file()
    secret = keys["aes"].read_bytes().strip()
    for path in first.run_dir.rglob("*"):  # the key is never written into the run, in hex or raw
        assert not path.is_file() or (secret not in path.read_bytes() and bytes.fromhex(secret.decode())
                                      not in path.read_bytes())
    resumed = crossframe.run(secure_config(tiny, "enc"), resume=first.run_dir, quiet=True)
    assert resumed.steps == 10 and resumed.checkpoint.name == "step_10"
    assert load_checkpoint(resumed.run_dir).step == 10
    assert evaluate(resumed.run_dir)["val/loss"] == pytest.approx(resumed.metrics["val/loss"], rel=1e-6)
    from crossframe.compress.pipeline import export_run

    _, entries = export_run(resumed.run_dir, ["onnx"])
    export_dir = Path(entries[0]["path"]).parent
    assert (export_dir / "manifest.sig").is_file()  # exports are signed, and sealed (test_security_sealed.py)
    assert (export_dir / "model.onnx").read_bytes().startswith(MAGIC)
    assert main(["verify", str(resumed.run_dir)]) == 0


def _rehash(directory: Path, name: str) -> None:
    """Recompute ``name``'s manifest digest, as an attacker who changed it would."""
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["files"][name] = hashlib.sha256((directory / name).read_bytes()).hexdigest()
    (directory / "manifest.json").write_text(json.dumps(manifest))


def test_wrong_or_missing_keys_and_changed_files_are_refused(workdir: Path, tiny: Any, keys: dict[str, Path],
                                                             capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = crossframe.run(secure_config(tiny, "enc"), quiet=True).run_dir
    step = run_dir / "checkpoints" / "step_10"
    assert cli(capsys, "eval", str(run_dir))[0] == 0

    monkeypatch.delenv(KEY_FILE_ENV)
    code, err = cli(capsys, "eval", str(run_dir))
    assert code == 2 and "is encrypted" in err and "\n" not in err
    (workdir / "wrong.key").write_text(os.urandom(32).hex())
    code, err = cli(capsys, "--key-file", str(workdir / "wrong.key"), "eval", str(run_dir))
    assert code == 2 and "wrong key" in err and "\n" not in err
    code, err = cli(capsys, "--key-file", str(keys["aes"]), "eval", str(run_dir))
    assert code == 0, err

    other = write_new_keys(workdir / "other")
    monkeypatch.setenv(VERIFY_KEY_ENV, str(other["verify"]))
    code, err = cli(capsys, "--key-file", str(keys["aes"]), "eval", str(run_dir))
    assert code == 2 and "not the trusted key" in err  # a signature from the wrong key
    code, out = cli(capsys, "verify", str(run_dir), "--public-key", str(keys["verify"]))
    assert code == 0 and out.count("ok  ") == 2 and "signed by" in out
    monkeypatch.delenv(VERIFY_KEY_ENV)

    blob = bytearray((step / "model.safetensors").read_bytes())
    blob[len(blob) // 2] ^= 0x01
    (step / "model.safetensors").write_bytes(bytes(blob))
    code, err = cli(capsys, "--key-file", str(keys["aes"]), "eval", str(run_dir))
    assert code == 2 and "sha256 does not match" in err  # the manifest catches it first
    _rehash(step, "model.safetensors")
    code, err = cli(capsys, "--key-file", str(keys["aes"]), "eval", str(run_dir))
    assert code == 2 and "signature does not match" in err  # a rewritten manifest breaks the signature
    (step / "manifest.sig").unlink()  # stripping the signature: AES-GCM still refuses the changed bytes
    code, err = cli(capsys, "--key-file", str(keys["aes"]), "eval", str(run_dir))
    assert code == 2 and "cannot be decrypted" in err
    code, err = cli(capsys, "verify", str(run_dir), "--public-key", str(keys["verify"]))
    assert code == 2 and "not signed" in err  # a pinned key requires signatures


def test_runs_written_before_encryption_still_load(tmp_path: Path, keys: dict[str, Path]) -> None:
    weights = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    old = save_checkpoint(tmp_path / "old", 3, weights, {}, {"backend": "torch"}, keep=2)
    (old / "manifest.json").unlink()  # written before manifests, too
    assert np.array_equal(load_checkpoint(old).weights["w"], weights["w"])  # keys set, nothing asked of them
    with protecting(Protection.from_config(type("S", (), {"encrypt": True, "sign": True})())):
        new = save_checkpoint(tmp_path / "new", 4, weights, {}, {"backend": "torch"}, keep=2)
    assert (new / "model.safetensors").read_bytes().startswith(MAGIC)
    assert np.array_equal(load_checkpoint(new).weights["w"], weights["w"])


def test_a_missing_key_fails_before_the_run(workdir: Path, tiny: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    for env in (KEY_FILE_ENV, SIGNING_KEY_ENV, VERIFY_KEY_ENV):
        monkeypatch.delenv(env, raising=False)
    with pytest.raises(SecurityError, match="CROSSFRAME_KEY_FILE"):
        crossframe.run(secure_config(tiny, "nokey"), quiet=True)
    assert not (workdir / "runs" / "nokey").exists()
    (workdir / "bad.key").write_text("not a key")
    monkeypatch.setenv(KEY_FILE_ENV, str(workdir / "bad.key"))
    with pytest.raises(SecurityError, match="256-bit key"):
        crossframe.run(secure_config(tiny, "badkey"), quiet=True)


def test_token_stores_are_sealed_and_open_with_the_key(tmp_path: Path, keys: dict[str, Path],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from crossframe.security.keys import read_aes_key
    from crossframe.text.store import TokenStore, prepare
    from crossframe.text.tokenizers import BytesTokenizer

    docs = [f"secret document {i}" for i in range(40)]
    plain = prepare(docs, BytesTokenizer(), tmp_path / "plain", val_fraction=0.25)
    with protecting(Protection(key=read_aes_key(keys["aes"]))):
        sealed = prepare(docs, BytesTokenizer(), tmp_path / "sealed", val_fraction=0.25)
    for file in ("train.bin", "train.idx.npy", "train.ids", "val.bin"):
        data = (tmp_path / "sealed" / file).read_bytes()
        assert data.startswith(MAGIC) and b"secret" not in data and b"#1" not in data
    for split in ("train", "val"):
        assert np.array_equal(sealed[split].tokens, plain[split].tokens)
        assert np.array_equal(sealed[split].offsets, plain[split].offsets)
        assert list(sealed[split].doc_ids()) == list(plain[split].doc_ids())
    monkeypatch.delenv(KEY_FILE_ENV)
    with pytest.raises(SecurityError, match="is encrypted"):
        TokenStore.open(tmp_path / "sealed")
    monkeypatch.setenv(KEY_FILE_ENV, str(keys["aes"]))
    blob = bytearray((tmp_path / "sealed" / "val.bin").read_bytes())
    blob[-1] ^= 0x80
    (tmp_path / "sealed" / "val.bin").write_bytes(bytes(blob))
    with pytest.raises(SecurityError, match="cannot be decrypted"):
        TokenStore.open(tmp_path / "sealed")
