"""Params of the ``onnx-canonical`` exporter (kept apart so registering it imports no onnx)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

#: opset 17: understood by every ONNX Runtime since 1.12 and by most other runtimes
DEFAULT_OPSET = 17
#: the first opset with a ``Gelu`` operator (``approximate="tanh"``); ONNX Runtime >= 1.17
GELU_OPSET = 20


class OnnxExportParams(BaseModel):
    """``{name: onnx-canonical, opset: 17}``."""

    model_config = ConfigDict(extra="forbid")
    opset: int = Field(DEFAULT_OPSET, ge=DEFAULT_OPSET,
                       description=f"ONNX opset of the default domain; >= {GELU_OPSET} uses the Gelu op "
                                   "instead of spelling GELU out in Tanh/Mul/Add")
