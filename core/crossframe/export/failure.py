"""One line for a failed export: the backend, the format and, where the converter says it, the op.

Converters fail in their own words (torch's dynamo exporter, tf2onnx, jax2onnx, ONNX Runtime, the
TFLite converter); :func:`export_failure` picks the op out of their messages so a person sees
``export: onnx from jax (gpt) failed at op 'pure_callback': No plugins registered ...`` instead
of a traceback.
"""

from __future__ import annotations

import re

from crossframe.errors import ExportError

#: patterns naming the op a converter or runtime could not handle (the first group is the op)
OP_PATTERNS: tuple[re.Pattern[str], ...] = tuple(re.compile(p, re.MULTILINE) for p in (
    r"No ONNX function found for <OpOverload\(op='([^']+)'",  # torch.onnx (dynamo)
    r"target=torch\.ops\.([\w.]+?)(?:\.default)?\]",  # torch.onnx: the node being translated
    r"No plugins registered for primitive '([^']+)'",  # jax2onnx
    r"primitive '([^']+)'",  # jax2onnx, other messages
    r"^\s*(jax\.[\w.]+) with ",  # jax2onnx function-level plugins
    r"^\s*([\w.]+) currently supports",  # jax2onnx limits on a primitive's params
    r"Tensorflow op \[[^:\]]*: (\w+)\] is not supported",  # tf2onnx
    r"unsupported ops?:? \[?'?(\w+)",  # tf2onnx summaries, our own checks
    r"Could not find an implementation for (\w+)\(",  # ONNX Runtime: an op it lacks
    r"while running (\w+) node",  # ONNX Runtime: a kernel that failed
    r"'tf\.(\w+)' op is neither a custom op nor a flex op",  # TFLite converter
    r"op '?(\w+)'? is not supported",
))

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def find_op(message: str) -> str | None:
    """The op a converter's error message names, if it names one."""
    text = _ANSI.sub("", message)
    for pattern in OP_PATTERNS:
        match = pattern.search(text)
        if match:
            return match.group(1)
    return None


def first_line(message: str, limit: int = 200) -> str:
    """The most telling line of a long message (a 'DispatchError' or 'Exception summary' line if any)."""
    lines = [ln.strip() for ln in _ANSI.sub("", message).splitlines() if ln.strip()]
    if not lines:
        return ""
    for line in lines:  # torch.onnx buries the cause under a page of advice
        if line.startswith("<class") and ">: " in line:
            line = line.split(">: ", 1)[1]
            return line if len(line) <= limit else line[: limit - 3] + "..."
    line = lines[0]
    if "error: " in line:  # MLIR converters: '<what failed><location>: error: <why>'
        line = line.rsplit("error: ", 1)[1].strip()
    return line if len(line) <= limit else line[: limit - 3] + "..."


def export_failure(backend: str, fmt: str, model: str, exc: BaseException | str, op: str | None = None
                   ) -> ExportError:
    """An :class:`ExportError` with one line naming the backend, the format, the model and the op."""
    message = str(exc) if not isinstance(exc, str) else exc
    cause = str(exc.__cause__) if isinstance(exc, BaseException) and exc.__cause__ is not None else ""
    op = op or find_op(message) or (find_op(cause) if cause else None)
    kind = f"{type(exc).__name__}: " if isinstance(exc, BaseException) else ""
    where = f" at op '{op}'" if op else ""
    return ExportError(f"export: {fmt} from {backend} ({model}) failed{where}: {kind}{first_line(message)}")
