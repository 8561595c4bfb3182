"""Exports from the torch backend: ONNX through torch's dynamo exporter, and ``torch.export`` programs (.pt2).

Both trace the backend's own ``nn.Module`` (built from the request's canonical weights, in eval
mode, float32 on the CPU) with ``torch.export`` and a dynamic batch axis (and a dynamic sequence
axis up to ``max_seq_len`` for token models), so the artefacts run on any batch size.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crossframe.errors import CapabilityError, CrossframeError
from crossframe.export.base import ExportArtifact, ExportRequest
from crossframe.export.failure import export_failure
from crossframe.export.files import atomic_output
from crossframe.export.quiet import quiet_converters
from crossframe.export.verify import is_token_model, trace_example
from crossframe.security.artifacts import artifact_bytes, encrypting, write_artifact
from crossframe_torch.models import build_module, load_canonical

FORMATS = ("onnx", "torch-export")
FILES = {"onnx": "model.onnx", "torch-export": "model.pt2"}


_quiet = functools.partial(quiet_converters, "torch.onnx")
"""Silence the exporters' advisory warnings and log lines (torchvision ops, pytree deprecations)."""


def longest_sequence(request: ExportRequest) -> int:
    """The longest token sequence an exported language model takes: ``max_seq_len`` (a ``gpt``), else the
    data's sequence length (a graph decoder)."""
    return int(request.spec.params.get("max_seq_len") or request.spec.data_info.input_shape[0])


def native_module(request: ExportRequest) -> torch.nn.Module:
    """The backend's module for the request: canonical weights loaded, eval mode, float32, CPU (rotary tables
    long enough for every sequence the export takes, so a traced length only slices them)."""
    from crossframe_torch.lowering import Attention

    module = build_module(request.spec)
    load_canonical(module, request.spec, request.weights)
    if is_token_model(request):
        for layer in module.modules():
            if isinstance(layer, Attention):
                layer.positions = max(layer.positions, longest_sequence(request))
    return module.float().eval()


def dynamic_shapes(request: ExportRequest) -> tuple[dict[int, Any]]:
    """``torch.export`` dynamic shapes of the one input: batch, and sequence (<= the longest) for tokens."""
    axes: dict[int, Any] = {0: torch.export.Dim("batch")}
    if is_token_model(request):
        axes[1] = torch.export.Dim("seq", max=longest_sequence(request))
    return (axes,)


def export(request: ExportRequest, fmt: str, options: dict[str, Any]) -> ExportArtifact:
    """Write ``fmt`` (``onnx`` or ``torch-export``) under ``request.out_dir``."""
    if fmt not in FORMATS:
        raise CapabilityError(f"export: backend 'torch' cannot write '{fmt}' (it writes 'onnx' or 'torch-export')")
    module = native_module(request)
    x = trace_example(request)
    example = torch.from_numpy(x)
    path = Path(request.out_dir) / FILES[fmt]
    axes = {"0": "batch", "1": "seq"} if is_token_model(request) else {"0": "batch"}
    extra: dict[str, Any] = {"traced_shape": list(x.shape), "input_dtype": str(x.dtype), "precision": "fp32",
                             "dynamic_axes": axes}
    try:
        with _quiet(), torch.no_grad(), atomic_output(path) as tmp:
            if fmt == "onnx":
                extra["opset"] = _write_onnx(module, example, request, int(options.get("opset", 18)), tmp,
                                             path.name)
            else:
                program = torch.export.export(module, (example,), dynamic_shapes=dynamic_shapes(request))
                buffer = io.BytesIO()  # in memory, so security.encrypt seals it before it is written
                torch.export.save(program, buffer)
                write_artifact(tmp, buffer.getvalue(), name=path.name)
    except CrossframeError:
        raise
    except Exception as exc:
        raise export_failure("torch", fmt, request.spec.name, exc) from None
    return ExportArtifact(fmt, path, "torch", fmt, extra)


def _write_onnx(module: torch.nn.Module, example: torch.Tensor, request: ExportRequest, opset: int,
                path: Path, final: str) -> int:
    """torch.onnx (dynamo) to ``path``; checked for untranslated ops; returns the opset written."""
    import onnx

    from crossframe.export.onnx_runtime import check_onnx_model

    program = torch.onnx.export(module, (example,), dynamic_shapes=dynamic_shapes(request), dynamo=True,
                                opset_version=opset, input_names=["x"], output_names=["y"], verbose=False)
    if program is None:  # pragma: no cover - the dynamo path always returns a program
        raise RuntimeError("torch.onnx.export returned no program")
    if not encrypting():
        program.save(str(path))  # large models get their weights as external data beside the file
        return check_onnx_model(onnx.load(str(path)), "torch", request.spec.name)
    proto = program.model_proto  # security.encrypt: serialised and sealed in memory (models under 2 GB)
    written = check_onnx_model(proto, "torch", request.spec.name)
    write_artifact(path, proto.SerializeToString(), name=final)
    return written


def load(artifact: ExportArtifact) -> Callable[[np.ndarray], np.ndarray]:
    """Run a ``torch-export`` artefact: ``torch.export.load`` and its module, float32 numpy out."""
    if artifact.format != "torch-export":
        raise CapabilityError(f"export: backend 'torch' cannot load '{artifact.format}' artefacts")
    data = artifact_bytes(artifact.path)  # a sealed program is decrypted in memory (one line without the key)
    try:
        with _quiet():
            program = torch.export.load(io.BytesIO(data))
    except Exception as exc:
        raise export_failure("torch", artifact.format, str(artifact.extra.get("model", "?")), exc) from None
    module = program.module()
    dtype = np.dtype(artifact.extra.get("input_dtype", "float32"))

    @torch.no_grad()
    def run(x: np.ndarray) -> np.ndarray:
        out = module(torch.from_numpy(np.ascontiguousarray(x, dtype=dtype)))
        return out.float().numpy()

    return run
