"""Read a safetensors file's header (tensor names, dtypes, shapes) without loading a tensor.

The header is an 8-byte little-endian length followed by that much JSON. Uploads are
untrusted, so the header is bounded, every entry is checked, and the data offsets must
tile the rest of the file exactly: a truncated or padded file is refused here, before any
loader sees it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import bad_request

# safetensors' own reader refuses headers above 100 MB; a LoRA header is a few KB.
_MAX_HEADER_BYTES = 100_000_000
_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8,
}  # fmt: skip


@dataclass(frozen=True)
class TensorHeader:
    dtype: str
    shape: tuple[int, ...]


class _Corrupt(Exception):
    pass


def read_safetensors_header(path: Path) -> dict[str, TensorHeader]:
    """Tensor names, dtypes and shapes of a safetensors file, read from its header only.

    The header is an 8-byte little-endian length followed by that much JSON; checking that
    the data offsets tile the rest of the file exactly catches truncated uploads.
    """
    try:
        return _read(path)
    except _Corrupt as e:
        raise bad_request(f"{path.name} is corrupt: {e}", code="invalid_adapter") from None


def _read(path: Path) -> dict[str, TensorHeader]:
    file_size = path.stat().st_size
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise _corrupt(f"it is {file_size} bytes, shorter than a safetensors header")
        header_len = int.from_bytes(prefix, "little")
        if header_len > min(_MAX_HEADER_BYTES, file_size - 8):
            raise _corrupt(f"its header claims {header_len} bytes; the file is truncated or not safetensors")
        raw = f.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _corrupt("its header is not valid JSON") from None
    if not isinstance(header, dict):
        raise _corrupt("its header is not a JSON object")
    header.pop("__metadata__", None)
    tensors, spans = {}, []
    for name, entry in header.items():
        tensors[name], span = _tensor_entry(name, entry)
        spans.append(span)
    _check_spans(spans, data_len=file_size - 8 - header_len)
    return tensors


def _tensor_entry(name: str, entry: Any) -> tuple[TensorHeader, tuple[int, int]]:
    if not isinstance(entry, dict):
        raise _corrupt(f"tensor {name} has no dtype/shape/data_offsets entry")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in _DTYPE_BYTES:
        raise _corrupt(f"tensor {name} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_count(d) and d >= 0 for d in shape):
        raise _corrupt(f"tensor {name} has an invalid shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_count(o) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise _corrupt(f"tensor {name} has invalid data_offsets {offsets!r}")
    begin, end = offsets
    if end - begin != math.prod(shape) * _DTYPE_BYTES[dtype]:
        raise _corrupt(f"tensor {name} data size does not match its shape {shape} and dtype {dtype}")
    return TensorHeader(dtype=dtype, shape=tuple(shape)), (begin, end)


def _check_spans(spans: list[tuple[int, int]], *, data_len: int) -> None:
    position = 0
    for begin, end in sorted(spans):
        if begin != position:
            raise _corrupt("its tensor data overlaps or leaves gaps")
        position = end
    if position > data_len:
        raise _corrupt(f"it holds {data_len} bytes of tensor data but its header needs {position}; it is truncated")
    if position < data_len:
        raise _corrupt("it has trailing bytes after the last tensor")


def _corrupt(why: str) -> _Corrupt:
    return _Corrupt(why)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
