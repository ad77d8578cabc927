"""Which files an adapter directory may hold, how large, and the weights file's header."""

from __future__ import annotations

import stat
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from adapters.safetensors_file import SafetensorsError, TensorEntry, read_header
from core.errors import bad_request

from .refusals import invalid

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
README_FILE = "README.md"
ALLOWED_FILES = frozenset({CONFIG_FILE, WEIGHTS_FILE, README_FILE})
# Only the weights are large; a config or model card past a few KB is padding, and
# highly compressible padding is how a small upload becomes a large stored adapter.
SMALL_FILE_MAX_BYTES: Mapping[str, int] = MappingProxyType({CONFIG_FILE: 64 * 1024, README_FILE: 64 * 1024})

# Formats that unpickle on load and so can run code in the engine process.
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz")


def list_adapter_files(path: Path) -> dict[str, int]:
    """Each file's size, once the directory holds only allowed regular files, the two required among them."""
    if path.is_symlink() or not path.is_dir():
        raise bad_request(f"adapter path {path.name!r} is not a directory", code="invalid_adapter")
    sizes: dict[str, int] = {}
    for entry in sorted(path.iterdir()):
        info = entry.lstat()
        if stat.S_ISLNK(info.st_mode):
            raise invalid(f"adapter contains a symlink ({entry.name}); only regular files are allowed")
        if stat.S_ISDIR(info.st_mode):
            raise invalid(
                f"adapter contains a folder ({entry.name}); put {CONFIG_FILE} and "
                f"{WEIGHTS_FILE} directly in the adapter's top level"
            )
        if not stat.S_ISREG(info.st_mode):
            raise invalid(f"adapter contains {entry.name}, which is not a regular file")
        if entry.name not in ALLOWED_FILES:
            raise invalid(_unexpected_file_message(entry.name))
        check_small_file(entry.name, info.st_size)
        sizes[entry.name] = info.st_size
    for required in (CONFIG_FILE, WEIGHTS_FILE):
        if required not in sizes:
            raise invalid(
                f"adapter is missing {required}; a PEFT LoRA adapter saved with "
                f"save_pretrained() has {CONFIG_FILE} and {WEIGHTS_FILE}"
            )
    return sizes


def check_small_file(name: str, size: int) -> None:
    """A config or model card past its cap is refused (adapters.archives asks it from an
    archive member's declared size, before writing a byte)."""
    limit = SMALL_FILE_MAX_BYTES.get(name)
    if limit is not None and size > limit:
        raise bad_request(
            f"{name} is {size} bytes; the largest accepted {name} is {limit} bytes",
            code="adapter_file_too_large",
        )


def _unexpected_file_message(name: str) -> str:
    if name.lower().endswith(_PICKLE_SUFFIXES):
        return (
            f"adapter contains {name}: safetensors only. Pickle-based weights can run code "
            f"when loaded; save the adapter with safe_serialization=True to get {WEIGHTS_FILE}"
        )
    return f"adapter contains unexpected file {name}; allowed files are {', '.join(sorted(ALLOWED_FILES))}"


def read_safetensors_header(path: Path) -> dict[str, TensorEntry]:
    """Tensor names, dtypes and shapes of the adapter's safetensors file, from its header only."""
    try:
        return read_header(path).tensors
    except SafetensorsError as exc:
        raise bad_request(f"{WEIGHTS_FILE} is corrupt: {exc}", code="invalid_adapter") from None
