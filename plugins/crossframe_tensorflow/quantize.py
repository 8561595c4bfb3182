"""``tflite-int8``: TFLite dynamic-range quantisation of the tensorflow backend's SavedModel export.

The float32 ``saved-model`` export of the run is converted with ``tf.lite.TFLiteConverter`` and
``optimizations = [tf.lite.Optimize.DEFAULT]`` (int8 weights, float activations) and run in the
TFLite interpreter (:func:`crossframe_tensorflow.export.tflite_runner`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from crossframe.config.loading import atomic_write_bytes
from crossframe.errors import ExportError
from crossframe.export.base import ExportRequest
from crossframe_tensorflow.devices import tf
from crossframe_tensorflow.export import tflite_runner

#: the export step this module makes (see ``Backend.int8_module``) and the format of its artefact
STEP = "tflite-int8"
FORMAT = "tflite"
FILE = "model.int8.tflite"


def write_deployed(request: ExportRequest, fp32_export: Callable[[str, Path], Path],
                   tolerance: float) -> tuple[Path, Path | None, dict[str, Any]]:
    """Export the float32 SavedModel with ``fp32_export`` and convert it; the pipeline verifies the result."""
    saved = fp32_export("saved-model", Path(request.out_dir) / "fp32")
    try:
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        data = converter.convert()
    except Exception as exc:  # the converter raises many kinds; one line names the step
        raise ExportError(f"tflite-int8: the TFLite converter failed on '{saved.name}': "
                          f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    out = Path(request.out_dir) / FILE
    atomic_write_bytes(out, data)
    return out, saved, {"quantization": "dynamic-range int8 (tf.lite.Optimize.DEFAULT)"}


def load_deployed(path: Path, extra: dict[str, Any], threads: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """Run a ``tflite-int8`` artefact in the TFLite interpreter (``threads`` 0: its own choice)."""
    return tflite_runner(path, None, threads)
