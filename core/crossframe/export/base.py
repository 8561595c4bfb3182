"""The exporter contract shared by the backends' exporters, plugins and the export pipeline.

An exporter is registered through ``register_exporters`` as ``register(name, factory,
schema=..., description=...)``; ``factory(params)`` returns an object with a ``name``, the
``backends`` it can export from (``("*",)`` for any), :meth:`Exporter.export` and
:meth:`Exporter.load`. Verification (running the artefact against the native model on real
batches) is done by the pipeline through :meth:`Exporter.load`, the same for every format.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from crossframe.models.spec import ModelSpec, Params


@dataclass
class ExportRequest:
    """One model to export: canonical weights, the spec, the backend that builds it, an example batch."""

    spec: ModelSpec
    weights: Params
    backend: str
    out_dir: Path
    #: a real input batch (``x`` of a training batch); dynamic batch (and sequence) axes are exported
    sample: np.ndarray
    device: str = "cpu"
    precision: str = "fp32"


@dataclass
class ExportArtifact:
    """A file (or directory) an exporter wrote, and what it is."""

    format: str  # onnx | torch-export | saved-model | tflite | stablehlo | ...
    path: Path
    backend: str
    exporter: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def size_bytes(self) -> int:
        """Size on disk (a directory counts all its files)."""
        if self.path.is_dir():
            return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())
        return self.path.stat().st_size


class Exporter(Protocol):
    """Writes a model in one format and can load it back to run it."""

    name: str
    backends: tuple[str, ...]

    def export(self, request: ExportRequest) -> ExportArtifact:
        """Write the model under ``request.out_dir``; raise ExportError with one line on failure."""
        ...

    def load(self, artifact: ExportArtifact) -> Callable[[np.ndarray], np.ndarray]:
        """A function running the exported model on a numpy batch, returning float32 numpy outputs."""
        ...
