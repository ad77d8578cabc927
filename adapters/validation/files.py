"""Which files an adapter directory may hold, how large, and the weights file's header."""

from __future__ import annotations

import stat
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType

from adapters.safetensors_file import SafetensorsError, TensorEntry, read_header
from core.errors import TailorError, bad_request

from .refusals import invalid

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
README_FILE = "README.md"
ALLOWED_FILES = frozenset({CONFIG_FILE, WEIGHTS_FILE, README_FILE})
# Only the weights are large; a config or model card past a few KB is padding, and
# highly compressible padding is how a small upload becomes a large stored adapter.
SMALL_FILE_MAX_BYTES: Mapping[str, int] = MappingProxyType({CONFIG_FILE: 64 * 1024, README_FILE: 64 * 1024})

# Formats that unpickle on load and so can run code in the engine process.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz")


def flat_files(
    path: Path, what: str, folder_hint: str, refuse: Callable[[str], TailorError]
) -> Iterator[tuple[str, int]]:
    """Each entry's name and size, in name order, of a directory that may hold only regular files.

    A link could point anywhere on the host, and a folder would hide its files from the checks
    the caller makes on each name; `what` and `folder_hint` word the refusal for the caller.
    """
    if path.is_symlink() or not path.is_dir():
        raise refuse(f"{what} path {path.name!r} is not a directory")
    for entry in sorted(path.iterdir()):
        info = entry.lstat()
        if stat.S_ISLNK(info.st_mode):
            raise refuse(f"{what} contains a symlink ({entry.name}); only regular files are allowed")
        if stat.S_ISDIR(info.st_mode):
            raise refuse(f"{what} contains a folder ({entry.name}); {folder_hint}")
        if not stat.S_ISREG(info.st_mode):
            raise refuse(f"{what} contains {entry.name}, which is not a regular file")
        yield entry.name, info.st_size


def check_capped_size(name: str, size: int, caps: Mapping[str, int], code: str) -> None:
    """A file named in `caps` past its cap is refused with `code`."""
    limit = caps.get(name)
    if limit is not None and size > limit:
        raise bad_request(f"{name} is {size} bytes; the largest accepted {name} is {limit} bytes", code=code)


def list_adapter_files(path: Path) -> dict[str, int]:
    """Each file's size, once the directory holds only allowed regular files, the two required among them."""
    sizes: dict[str, int] = {}
    folder_hint = f"put {CONFIG_FILE} and {WEIGHTS_FILE} directly in the adapter's top level"
    for name, size in flat_files(path, "adapter", folder_hint, invalid):
        if name not in ALLOWED_FILES:
            raise invalid(_unexpected_file_message(name))
        check_small_file(name, size)
        sizes[name] = size
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
    check_capped_size(name, size, SMALL_FILE_MAX_BYTES, "adapter_file_too_large")


def _unexpected_file_message(name: str) -> str:
    if name.lower().endswith(PICKLE_SUFFIXES):
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
