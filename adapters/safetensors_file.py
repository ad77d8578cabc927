"""Read a safetensors file's table of tensors and write a new file from byte ranges of others.

The format is an 8-byte little-endian header length, a JSON header (per tensor: dtype,
shape, `data_offsets` into the data that follows; optional `__metadata__`), then the data.
Working on the bytes needs neither torch nor numpy and copies every dtype (bfloat16, float8,
...) exactly, one tensor at a time, so a model larger than memory is fine.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

METADATA_KEY = "__metadata__"
# What safetensors itself accepts as a header; a larger one is not a safetensors file.
MAX_HEADER_BYTES = 100_000_000
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8,
}  # fmt: skip
_CHUNK = 16 << 20


class SafetensorsError(ValueError):
    """Not a well-formed safetensors file; the message says what is wrong with it."""


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors file: what it is and where its bytes are."""

    path: Path
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute offset of its first byte in `path`
    nbytes: int


@dataclass(frozen=True)
class SafetensorsHeader:
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str] | None


def read_header(path: Path) -> SafetensorsHeader:
    """The tensors of `path` by name, read from its header only.

    Checking that the data offsets tile the rest of the file exactly catches truncated files.
    """
    file_size = path.stat().st_size
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise SafetensorsError(f"it is {file_size} bytes, shorter than a safetensors header")
        header_len = int.from_bytes(prefix, "little")
        if header_len > min(MAX_HEADER_BYTES, file_size - 8):
            raise SafetensorsError(f"its header claims {header_len} bytes; the file is truncated or not safetensors")
        raw = f.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise SafetensorsError("its header is not valid JSON") from None
    if not isinstance(header, dict):
        raise SafetensorsError("its header is not a JSON object")
    metadata = header.pop(METADATA_KEY, None)
    data_start = 8 + header_len
    tensors, spans = {}, []
    for name, entry in header.items():
        begin, end = _tensor_span(name, entry)
        tensors[name] = TensorEntry(path, entry["dtype"], tuple(entry["shape"]), data_start + begin, end - begin)
        spans.append((begin, end))
    _check_spans(spans, data_len=file_size - data_start)
    return SafetensorsHeader(tensors, metadata if isinstance(metadata, dict) else None)


def _tensor_span(name: str, entry: Any) -> tuple[int, int]:
    if not isinstance(entry, dict):
        raise SafetensorsError(f"tensor {name} has no dtype/shape/data_offsets entry")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        raise SafetensorsError(f"tensor {name} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise SafetensorsError(f"tensor {name} has an invalid shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_int(o) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise SafetensorsError(f"tensor {name} has invalid data_offsets {offsets!r}")
    begin, end = offsets
    if end - begin != math.prod(shape) * DTYPE_BYTES[dtype]:
        raise SafetensorsError(f"tensor {name} data size does not match its shape {shape} and dtype {dtype}")
    return begin, end


def _check_spans(spans: list[tuple[int, int]], *, data_len: int) -> None:
    position = 0
    for begin, end in sorted(spans):
        if begin != position:
            raise SafetensorsError("its tensor data overlaps or leaves gaps")
        position = end
    if position > data_len:
        raise SafetensorsError(
            f"it holds {data_len} bytes of tensor data but its header needs {position}; it is truncated"
        )
    if position < data_len:
        raise SafetensorsError("it has trailing bytes after the last tensor")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def write_file(out: Path, tensors: Mapping[str, TensorEntry], metadata: Mapping[str, str] | None) -> str:
    """Write `tensors` (new name -> source bytes) to `out` as one safetensors file; its sha256."""
    # Widest dtypes first, then by name (as safetensors orders them): every tensor starts
    # on a multiple of its element size, since the header is padded to 8 bytes.
    order = sorted(tensors, key=lambda name: (-DTYPE_BYTES[tensors[name].dtype], name))
    table: dict[str, object] = {}
    if metadata:
        table[METADATA_KEY] = dict(metadata)
    offset = 0
    for name in order:
        entry = tensors[name]
        span = [offset, offset + entry.nbytes]
        table[name] = {"dtype": entry.dtype, "shape": list(entry.shape), "data_offsets": span}
        offset += entry.nbytes
    header = json.dumps(table, separators=(",", ":")).encode("utf-8")
    header += b" " * (-len(header) % 8)
    sha = hashlib.sha256()
    with out.open("wb") as dst:
        for chunk in _chunks(struct.pack("<Q", len(header)) + header, (tensors[name] for name in order)):
            sha.update(chunk)
            dst.write(chunk)
    return sha.hexdigest()


def _chunks(head: bytes, entries: Iterable[TensorEntry]) -> Iterator[bytes]:
    yield head
    with contextlib.ExitStack() as stack:
        sources: dict[Path, IO[bytes]] = {}
        for entry in entries:
            if entry.path not in sources:
                sources[entry.path] = stack.enter_context(entry.path.open("rb"))
            src = sources[entry.path]
            src.seek(entry.start)
            left = entry.nbytes
            while left:
                chunk = src.read(min(left, _CHUNK))
                if not chunk:
                    raise SafetensorsError(f"{entry.path} ended inside a tensor")
                left -= len(chunk)
                yield chunk
