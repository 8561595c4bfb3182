"""Reading and writing safetensors files with numpy, bf16 included (through ``ml_dtypes``).

The reader memory-maps the file and returns read-only views of it: no tensor is copied or cast on the
host, so an import reads each byte once, when a backend places the tensor on its device. The format is
an 8-byte little-endian header length, a JSON header (dtype, shape, byte offsets per tensor), then the
raw little-endian data.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from crossframe.errors import CheckpointError


def _dtypes() -> dict[str, np.dtype]:
    import ml_dtypes

    return {"F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
            "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype("<i8"), "I32": np.dtype("<i4"),
            "I16": np.dtype("<i2"), "I8": np.dtype("i1"), "U8": np.dtype("u1"), "BOOL": np.dtype("?")}


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of ``path`` as a read-only view of the memory-mapped file (one-line errors)."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + length) if os.path.getsize(path) > 8 + length \
            else np.zeros(0, np.uint8)
    except (OSError, ValueError, struct.error) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    dtypes = _dtypes()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = dtypes[info["dtype"]]
            start, end = info["data_offsets"]
            shape = tuple(int(d) for d in info["shape"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: tensor '{name}' has dtype {info.get('dtype')!r} or a header entry "
                                  f"this reader does not know") from None
        if end - start != dtype.itemsize * int(np.prod(shape)) or end > len(data):
            raise CheckpointError(f"{path}: tensor '{name}' does not fit its byte range (a truncated file?)")
        out[name] = data[start:end].view(dtype).reshape(shape)
    return out


def write_safetensors(path: str | Path, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None
                      ) -> None:
    """Write ``tensors`` (any of the dtypes above, bf16 included) to ``path``."""
    names = {v: k for k, v in _dtypes().items()}
    header: dict[str, object] = {"__metadata__": dict(metadata or {})}
    offset = 0
    arrays = []
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        if array.dtype.newbyteorder("<") != array.dtype and array.dtype.byteorder not in ("=", "|", "<"):
            array = array.astype(array.dtype.newbyteorder("<"))
        code = names.get(np.dtype(array.dtype).newbyteorder("<")) or names.get(array.dtype)
        if code is None:
            raise CheckpointError(f"{path}: cannot write '{name}' of dtype {array.dtype}")
        header[name] = {"dtype": code, "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
        arrays.append(array)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    with Path(path).open("wb") as handle:
        handle.write(struct.pack("<Q", len(raw)))
        handle.write(raw)
        for array in arrays:
            handle.write(array.tobytes())
