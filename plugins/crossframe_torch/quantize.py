"""``torch-int8``: the torch backend's module quantised with torchao and saved as a pickle-free ``.pt2``.

The run's canonical weights are loaded into the backend's own ``nn.Module`` (built and filled as
``inference_state`` does), every ``nn.Linear`` weight is quantised to int8 with torchao's
``quantize_`` (:data:`SCHEMES`: per-output-channel symmetric int8 weights; ``weight-only`` keeps
float activations, ``dynamic`` also quantises activations per token at run time), and the tensor
subclasses torchao puts in place are unwrapped into plain tensors (int8 data, float scales) so
``torch.export`` writes them as raw bytes. The program is exported with a dynamic batch axis
(and sequence axis for token models) and saved with ``torch.export.save``, without the per-node
source tracebacks (:data:`DROPPED_META`). Embedding tables (and a head tied to them) stay float32:
``quantize_`` replaces ``nn.Linear`` weights only.

No pickle of arbitrary objects: :func:`check_archive` refuses a ``.pt2`` whose weights or
constants are stored through pickle, or whose sample inputs do not load with
``torch.load(weights_only=True)``; the writer runs it on what it wrote and the loader runs it
before ``torch.export.load``. Loading needs ``import torchao`` (its quantisation ops, used by the
``dynamic`` scheme's graph), which :func:`load_int8` does.
"""

from __future__ import annotations

import io
import json
import logging
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crossframe.errors import ExportError
from crossframe.export.base import ExportRequest
from crossframe.export.files import atomic_output
from crossframe.export.verify import is_token_model, trace_example, verification_batches
from crossframe_torch.export import _quiet, dynamic_shapes, native_module

#: scheme name -> the torchao 0.18 config class name (in ``torchao.quantization``)
SCHEMES = {"weight-only": "Int8WeightOnlyConfig", "dynamic": "Int8DynamicActivationInt8WeightConfig"}
#: the scheme ``torch-int8`` uses unless told otherwise (faster and closer to fp32 on CPU; see docs/compress.md)
DEFAULT_SCHEME = "weight-only"
FILE = "model.int8.pt2"
#: node metadata not written to the .pt2 (tracebacks with this machine's source paths; the torch function called)
DROPPED_META = ("stack_trace", "torch_fn")


def _torchao() -> Any:
    """``import torchao`` with its optional-kernel load messages (CUDA/mxfp8 libraries) silenced."""
    logger = logging.getLogger("torchao")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torchao
            import torchao.quantization
    finally:
        logger.setLevel(level)
    return torchao


def quantize_module(module: torch.nn.Module, scheme: str = DEFAULT_SCHEME) -> torch.nn.Module:
    """Quantise ``module``'s ``nn.Linear`` weights in place with torchao, unwrapped to plain tensors."""
    if scheme not in SCHEMES:
        raise ExportError(f"torch-int8: unknown scheme '{scheme}' (allowed: {', '.join(SCHEMES)})")
    torchao = _torchao()
    from torchao.utils import unwrap_tensor_subclass

    config = getattr(torchao.quantization, SCHEMES[scheme])()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torchao.quantization.quantize_(module, config)
    return unwrap_tensor_subclass(module)


def check_archive(path: Path) -> dict[str, int]:
    """Refuse a ``.pt2`` that would unpickle anything but plain tensors; returns counts of what it holds.

    Every weight and constant entry must be raw bytes (``use_pickle`` false) and the sample inputs
    must load with ``torch.load(weights_only=True)``.
    """
    counts = {"weights": 0, "int8_weights": 0}
    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if name.endswith(("data/weights/model_weights_config.json",
                                  "data/constants/model_constants_config.json")):
                    entries = json.loads(archive.read(name)).get("config", {})
                    for key, meta in entries.items():
                        if meta.get("use_pickle"):
                            raise ExportError(f"torch-int8: '{path.name}' stores '{key}' through pickle "
                                              "(only raw tensor bytes are allowed)")
                        if "weights" in name:
                            counts["weights"] += 1
                            counts["int8_weights"] += meta.get("tensor_meta", {}).get("dtype") == 2  # int8
                elif name.endswith(".pt") and "/sample_inputs/" in name:
                    torch.load(io.BytesIO(archive.read(name)), weights_only=True)
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"torch-int8: '{path}' is not a pickle-free torch.export archive: "
                          f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    return counts


def load_int8(path: Path, input_dtype: str = "float32") -> Callable[[np.ndarray], np.ndarray]:
    """Load a ``torch-int8`` ``.pt2`` (checked pickle-free first); a numpy-in, float32-numpy-out function."""
    path = Path(path)
    _torchao()  # registers torchao's ops the dynamic scheme's graph calls
    check_archive(path)
    try:
        with _quiet():
            module = torch.export.load(str(path)).module()
    except Exception as exc:
        raise ExportError(f"torch-int8: cannot load '{path}': {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    dtype = np.dtype(input_dtype)

    @torch.no_grad()
    def run(x: np.ndarray) -> np.ndarray:
        return module(torch.from_numpy(np.ascontiguousarray(x, dtype=dtype))).float().numpy()

    return run


def write_int8(request: ExportRequest, scheme: str = DEFAULT_SCHEME,
               tolerance: float = 0.1) -> tuple[Path, dict[str, Any]]:
    """Quantise the request's model, export and save it to ``out_dir/model.int8.pt2``, reload and check it.

    The reloaded file is compared with the fp32 module on real batches of other batch sizes (and
    sequence lengths) than traced; over ``tolerance`` (``max|q - f| / max|f|``) is an ExportError.
    Returns the path and what to report.
    """
    if request.backend != "torch":
        raise ExportError(f"torch-int8: quantises the torch backend's module, but this run's backend is "
                          f"'{request.backend}' (pass --backend torch, or use onnx-int8-dynamic for any backend)")
    reference = native_module(request)
    module = quantize_module(native_module(request), scheme)
    x = trace_example(request)
    path = Path(request.out_dir) / FILE
    Path(request.out_dir).mkdir(parents=True, exist_ok=True)
    try:
        with _quiet(), torch.no_grad(), atomic_output(path) as tmp:
            program = torch.export.export(module, (torch.from_numpy(x),), dynamic_shapes=dynamic_shapes(request))
            for node in program.graph.nodes:  # debugging aids only (source paths), a third of the graph's JSON
                for key in DROPPED_META:
                    node.meta.pop(key, None)
            torch.export.save(program, str(tmp))
            check_archive(Path(tmp))
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"torch-int8: torch.export of the quantised '{request.spec.name}' failed: "
                          f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    counts = check_archive(path)
    run = load_int8(path, str(x.dtype))
    checks = []
    for batch in verification_batches(np.asarray(request.sample), x.shape, is_token_model(request)):
        with torch.no_grad():
            ref = reference(torch.from_numpy(np.ascontiguousarray(batch, dtype=x.dtype))).float().numpy()
        got = run(batch)
        err = float(np.max(np.abs(got - ref))) if ref.size else 0.0
        rel = err / max(float(np.max(np.abs(ref))) if ref.size else 0.0, 1e-12)
        checks.append({"shape": list(batch.shape), "max_abs_diff": err, "max_rel_diff": rel})
        if not rel <= tolerance:
            raise ExportError(f"torch-int8: the reloaded '{path.name}' differs from the fp32 module by {rel:.4f} of "
                              f"its scale on a batch of shape {list(batch.shape)}, over the tolerance {tolerance}")
    extra = {"quantization": f"torchao {_torchao().__version__} {SCHEMES[scheme]} (int8 per-channel weights"
                             f"{', dynamic int8 activations' if scheme == 'dynamic' else ', float activations'})",
             "scheme": scheme, "traced_shape": list(x.shape), "input_dtype": str(x.dtype),
             "int8_tensors": counts["int8_weights"], "tensors": counts["weights"],
             "pickle_free": True, "reload_check": checks}
    return path, extra


# ---------------------------------------------------------------------- the deployment-step interface

#: the export step this module makes (see ``Backend.int8_module``) and the format of its artefact
STEP = "torch-int8"
FORMAT = "torch-int8"


def write_deployed(request: ExportRequest, fp32_export: Callable[[str, Path], Path],
                   tolerance: float) -> tuple[Path, Path | None, dict[str, Any]]:
    """``torch-int8`` as a deployment step: :func:`write_int8` (no separate float32 file is needed)."""
    path, extra = write_int8(request, tolerance=tolerance)
    return path, None, extra


def load_deployed(path: Path, extra: dict[str, Any], threads: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """Run a ``torch-int8`` artefact (torch keeps its own thread setting, so ``threads`` is not used)."""
    return load_int8(path, str(extra.get("input_dtype", "float32")))
