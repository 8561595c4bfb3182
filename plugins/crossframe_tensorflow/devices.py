"""Mapping crossframe's device and precision names to TensorFlow's.

This is the one module of the package that imports tensorflow; the others take ``tf`` from
here, so TensorFlow's C++ logging is quietened before the first import however the package is
entered. TF 2.21 prints its oneDNN notice (and absl's "log messages before InitializeLog" line)
at import time whatever ``TF_CPP_MIN_LOG_LEVEL`` says, so the import runs with the process's
stderr pointed at /dev/null unless ``--debug`` / ``CROSSFRAME_DEBUG=1``: a one-line error stays one line.
Python exceptions from the import are raised as usual. ``TF_ENABLE_ONEDNN_OPTS=0`` would also
remove the notice but changes kernels, so it is not set: see ``docs/backend-tensorflow.md``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from types import ModuleType

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before the first `import tensorflow`


def _debugging() -> bool:
    return os.environ.get("CROSSFRAME_DEBUG", "") not in ("", "0") or "--debug" in sys.argv


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null for TensorFlow's C++ notices (not under ``--debug``).

    Used around the import and around the first device query, where a build with CUDA support
    on a machine without a GPU logs ``failed call to cuInit`` whatever ``TF_CPP_MIN_LOG_LEVEL`` says.
    """
    if _debugging():
        yield
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _import_tensorflow_quietly() -> ModuleType:
    """``import tensorflow`` with file descriptor 2 silenced for its import-time C++ notices."""
    with quiet_native_stderr():
        import tensorflow

    return tensorflow


tf = _import_tensorflow_quietly()

from crossframe.errors import CapabilityError  # noqa: E402

__all__ = ["available_devices", "compute_dtype", "tf", "tf_device"]

_KINDS = {"cpu": "CPU", "gpu": "GPU", "tpu": "TPU"}


def _found(kind: str) -> bool:
    """Whether TensorFlow sees a device of ``kind`` (``CPU``, ``GPU`` or ``TPU``)."""
    with quiet_native_stderr():  # the first query initialises CUDA in a CUDA build
        found = tf.config.list_physical_devices(kind)
    if found:
        return True
    # A TPU shows up as a logical device once its system is initialised (TPU VMs, Cloud TPU).
    return kind == "TPU" and bool(tf.config.list_logical_devices("TPU"))


def available_devices() -> tuple[str, ...]:
    """Device names TensorFlow offers here: cpu always, gpu and tpu only when actually found."""
    return tuple(name for name, kind in _KINDS.items() if name == "cpu" or _found(kind))


def tf_device(name: str) -> str:
    """The TensorFlow device string (``/CPU:0``, ``/GPU:0``, ``/TPU:0``) for a crossframe device name."""
    kind = _KINDS.get(name)
    if kind is None:
        raise CapabilityError(f"device: unknown device '{name}'")
    if name != "cpu" and not _found(kind):
        hint = ("tensorflow-cpu is installed, or no CUDA device is visible" if name == "gpu"
                else "run on a TPU VM with a TPU build of TensorFlow")
        raise CapabilityError(f"device: '{name}' requested, but TensorFlow sees no {kind} ({hint})")
    return f"/{kind}:0"


def compute_dtype(precision: str) -> tf.DType:
    """The dtype the forward pass computes in (variables stay float32 in every mode)."""
    try:
        return {"fp32": tf.float32, "bf16": tf.bfloat16, "fp16": tf.float16}[precision]
    except KeyError:
        raise CapabilityError(f"precision: unknown precision '{precision}'") from None
