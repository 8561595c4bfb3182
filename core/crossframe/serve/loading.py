"""What ``crossframe serve PATH`` serves: a run directory or an export directory, opened once.

A run directory is served through ONNX Runtime when it holds an ONNX export (``exports/onnx-*/
model.onnx``), else through its native backend. A language model whose backend has a batched KV
cache (``batch_decoder``) is served natively either way, since decoding with a cache beats
recomputing the context per token; ``engine='onnx'`` forces ONNX Runtime. An export directory
(one holding ``model.onnx``) is served through ONNX Runtime; the run directory above it gives
the task, the class names and the tokenizer.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crossframe.errors import ConfigError, UsageError

ONNX_FILE = "model.onnx"
ENGINES = ("auto", "onnx", "native")


@dataclass
class ServedModel:
    """A loaded model and what the server needs to know about it."""

    name: str
    task: str  # classification | regression | language_modeling
    engine: str  # "onnx" or "native:<backend>"
    input_shape: tuple[int, ...]
    num_outputs: int
    class_names: tuple[str, ...]
    #: a batch in, float32 outputs out (a language model: logits ``[B, T, V]`` for ids ``[B, T]``)
    predict: Callable[[np.ndarray], np.ndarray]
    source: Path
    tokenizer: Any = None
    window: int = 0
    #: ``slots -> Decoder`` (a backend's KV cache); ``None``: recompute through ``predict``
    batch_decoder: Callable[[int], Any] | None = None
    chat_template: str | None = None
    #: a tabular run's fitted transform (``preprocess.json``): ``/v1/predict`` ``rows`` go through it
    transform: Any = None

    @property
    def is_language_model(self) -> bool:
        """True for a GPT-style token model."""
        return self.task == "language_modeling"


def find_run_dir(path: Path) -> Path | None:
    """The run directory at or above ``path`` (one holding ``checkpoints/``), if any."""
    for candidate in [path, *path.parents][:4]:
        if (candidate / "checkpoints").is_dir():
            return candidate
    return None


def newest_onnx(run_dir: Path) -> Path | None:
    """The most recently written ``exports/*/model.onnx`` of a run."""
    files = sorted((run_dir / "exports").glob(f"onnx*/{ONNX_FILE}"), key=lambda p: p.stat().st_mtime)
    return files[-1] if files else None


def load_served_model(path: str | os.PathLike, *, engine: str = "auto", backend: str | None = None,
                      name: str | None = None, chat_template: str | os.PathLike | None = None) -> ServedModel:
    """Open ``path`` (a run or an export directory) for serving; one-line errors name what is wrong."""
    from crossframe.checkpoint import load_checkpoint

    if engine not in ENGINES:
        raise UsageError(f"--engine: '{engine}' is not one of {', '.join(ENGINES)}")
    path = Path(path)
    if not path.exists():
        raise UsageError(f"serve: '{path}' does not exist")
    onnx_file = path if path.suffix == ".onnx" else path / ONNX_FILE
    exported = onnx_file.is_file()
    run_dir = find_run_dir(onnx_file.parent if exported else path)
    if run_dir is None:
        raise UsageError(f"serve: '{path}' is neither a run directory (with checkpoints/) nor an export "
                         f"inside one (with {ONNX_FILE})")
    checkpoint = load_checkpoint(run_dir)
    info = checkpoint.state["model"]["data_info"]
    task = info["task"]
    if not exported and engine != "native":
        found = newest_onnx(run_dir)
        if found is not None:
            onnx_file, exported = found, True
    if engine == "onnx" and not exported:
        raise UsageError(f"--engine: '{run_dir}' has no ONNX export; run `crossframe export {run_dir} --format onnx`")
    tokenizer, window = None, 0
    if task == "language_modeling":
        from crossframe.text.tokenizers import load_tokenizer

        if not (run_dir / "tokenizer").is_dir():
            raise ConfigError(f"serve: '{run_dir}' has no tokenizer/ directory")
        tokenizer = load_tokenizer(run_dir / "tokenizer")
        params = checkpoint.state["model"]["params"]
        window = int(params.get("max_seq_len") or info["input_shape"][0])  # a graph decoder: its context
    model = ServedModel(name=name or run_dir.name, task=task, engine="", input_shape=tuple(info["input_shape"]),
                        num_outputs=int(info["num_outputs"]), class_names=tuple(info.get("class_names") or ()),
                        predict=_unset, source=path, tokenizer=tokenizer, window=window,
                        chat_template=_chat_template(run_dir, chat_template))
    from crossframe.data.tabular import load_transform

    model.transform = load_transform(run_dir)
    use_native = engine == "native" or not exported
    if not use_native and engine == "auto" and task == "language_modeling":
        use_native = _native_has_kv_cache(run_dir, backend)
    if use_native:
        _open_native(model, run_dir, checkpoint, backend)
    else:
        from crossframe.export.onnx_runtime import OnnxRunner

        runner = OnnxRunner(onnx_file, checkpoint.state.get("backend", "?"), checkpoint.state["model"]["name"])
        model.predict, model.engine, model.source = runner, "onnx", onnx_file
    return model


def _unset(x: np.ndarray) -> np.ndarray:
    raise RuntimeError("model not loaded")


def _native_has_kv_cache(run_dir: Path, backend: str | None) -> bool:
    from crossframe.config.loading import load_config
    from crossframe.train.runner import CONFIG_FILE, make_backend

    cfg = load_config(run_dir / CONFIG_FILE, backend=backend)
    return hasattr(make_backend(cfg.backend), "batch_decoder")


def _open_native(model: ServedModel, run_dir: Path, checkpoint: Any, backend: str | None) -> None:
    from crossframe.config.loading import load_config
    from crossframe.models import spec_from_json
    from crossframe.train.runner import CONFIG_FILE, prepare_backend

    if not (run_dir / CONFIG_FILE).is_file():
        raise ConfigError(f"serve: '{run_dir}' has no {CONFIG_FILE}")
    cfg = load_config(run_dir / CONFIG_FILE, backend=backend)
    spec = spec_from_json(checkpoint.state["model"])
    impl, device = prepare_backend(cfg, training=False)
    spec.check_weights(checkpoint.weights, f"checkpoint '{checkpoint.path}'")
    state = impl.inference_state(spec, checkpoint.weights, device, cfg.precision)
    model.predict = lambda x: impl.predict(state, x)
    model.engine = f"native:{cfg.backend}"
    model.source = checkpoint.path
    if model.is_language_model and hasattr(impl, "batch_decoder"):  # torch: a slot cache over any decoder graph
        model.batch_decoder = lambda slots: impl.batch_decoder(state, slots)


def _chat_template(run_dir: Path, given: str | os.PathLike | None) -> str | None:
    """The Jinja chat template: ``--chat-template FILE``, else the run's ``chat_template.jinja``."""
    for candidate in ([Path(given)] if given else [run_dir / "chat_template.jinja",
                                                   run_dir / "tokenizer" / "chat_template.jinja"]):
        if candidate.is_file():
            return candidate.read_text()
        if given:
            raise UsageError(f"--chat-template: '{candidate}' is not a file")
    return None
