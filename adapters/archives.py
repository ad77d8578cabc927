"""Unpack an uploaded adapter archive (.zip, .tar, .tar.gz) without trusting it.

Untrusted archives are how zip bombs, path traversal (`../`, absolute names, links) and
device files reach a server. Every member is checked before a byte is written: its name
is a plain relative path no deeper than folder/file, it is a regular file or folder, and
the bytes written across all members stay within the largest accepted adapter, counted
as they are copied (declared sizes lie). The archive must hold an adapter directory (its
`adapter_config.json`) or a full model's (its `config.json`) at the top or in a single
top-level folder; what that directory holds is judged by adapters.validation or
adapters.model_validation.
"""

from __future__ import annotations

import re
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Generator, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from adapters.model_validation import MODEL_CONFIG, check_small_model_file
from adapters.validation import CONFIG_FILE, check_small_file
from core.errors import TailorError, bad_request

ARCHIVE_MAX_MEMBERS = 64
# Deeper than folder/file is never a valid adapter; the cap keeps paths far from OS limits.
_ARCHIVE_MAX_DEPTH = 8
_COPY_CHUNK = 1 << 20


@dataclass
class _Budget:
    """Bytes an extraction may still write; shared by all members to defeat bombs."""

    max_bytes: int
    declared: int = 0
    written: int = 0


def extract_archive(archive: Path | str, dest: Path | str, *, max_bytes: int) -> Path:
    """Unpack an uploaded .zip, .tar or .tar.gz into `dest` and return the adapter folder.

    The format is told by content, not by name. `dest` must be missing or empty; on any
    refusal it is left empty. The returned folder is `dest` itself or its single top-level
    folder, whichever holds adapter_config.json.
    """
    archive, dest = Path(archive), Path(dest)
    kind = _sniff_archive(archive)
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise ValueError(f"extraction target {dest} must be empty")
    budget = _Budget(max_bytes=max_bytes)
    try:
        members = _zip_members(archive, budget) if kind == "zip" else _tar_members(archive, kind)
        # closing() shuts the archive even when a refusal stops the walk half-way.
        with closing(members):
            _extract_members(members, dest, budget)
        return _adapter_root(dest)
    # NotImplementedError: zip features Python cannot read; TypeError: tarfile's gzip
    # reader on a header cut short. Both are broken uploads, not server faults.
    except (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError, NotImplementedError, TypeError) as exc:
        _empty_dir(dest)
        raise bad_request(f"archive is corrupt or truncated: {exc}", code="invalid_archive") from None
    except BaseException:
        _empty_dir(dest)
        raise


def _sniff_archive(archive: Path) -> str:
    try:
        with archive.open("rb") as f:
            head = f.read(512)
    except OSError:
        raise bad_request("uploaded archive could not be read", code="invalid_archive") from None
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head.startswith(b"\x1f\x8b"):
        return "gz"
    if head[257:262] == b"ustar":
        return "tar"
    raise bad_request(
        "unsupported archive format: upload the adapter folder as .zip, .tar or .tar.gz",
        code="invalid_archive",
    )


# Each member: (name in archive, path parts, "file" | "dir", declared size, opener).
_Member = tuple[str, tuple[str, ...], str, int, Callable[[], IO[bytes]] | None]


def _zip_members(archive: Path, budget: _Budget) -> Generator[_Member, None, None]:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        _check_member_count(len(infos))
        # A zip lists every size up front, so an obvious bomb is refused before any write.
        if sum(info.file_size for info in infos) > budget.max_bytes:
            raise _too_big(budget)
        for info in infos:
            parts = _safe_parts(info.filename)
            # Unix zips keep st_mode in the high bits; many writers leave the type bits 0.
            mode = stat.S_IFMT(info.external_attr >> 16) if info.create_system == 3 else 0
            if stat.S_ISLNK(mode):
                raise _archive_error(f"member {info.filename} is a symlink; only files and folders are allowed")
            if info.is_dir() or stat.S_ISDIR(mode):
                yield info.filename, parts, "dir", 0, None
            elif mode and not stat.S_ISREG(mode):
                raise _archive_error(f"member {info.filename} is not a regular file")
            else:
                yield info.filename, parts, "file", info.file_size, _zip_opener(zf, info)


def _zip_opener(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> Callable[[], IO[bytes]]:
    def open_member() -> IO[bytes]:
        try:
            return zf.open(info)
        except (RuntimeError, NotImplementedError, OSError, ValueError) as exc:
            # Encrypted members, exotic compression methods, offsets pointing outside the file.
            raise _archive_error(f"member {info.filename} cannot be read: {exc}") from None

    return open_member


def _tar_members(archive: Path, kind: str) -> Generator[_Member, None, None]:
    # Stream mode reads members in order, so a bomb is stopped at the first member past
    # the budget instead of after decompressing the whole archive to list it.
    with tarfile.open(archive, mode="r|gz" if kind == "gz" else "r|") as tf:
        for count, member in enumerate(tf, start=1):
            _check_member_count(count)
            parts = _safe_parts(member.name)
            if member.isdir():
                yield member.name, parts, "dir", 0, None
            elif member.isreg() and not member.issparse():
                yield member.name, parts, "file", member.size, _tar_opener(tf, member)
            else:
                raise _archive_error(f"member {member.name} is {_tar_kind(member)}; only files and folders are allowed")


def _tar_opener(tf: tarfile.TarFile, member: tarfile.TarInfo) -> Callable[[], IO[bytes]]:
    def open_member() -> IO[bytes]:
        stream = tf.extractfile(member)
        if stream is None:
            raise _archive_error(f"member {member.name} cannot be read")
        return stream

    return open_member


def _tar_kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return "a symlink"
    if member.islnk():
        return "a hard link"
    if member.ischr() or member.isblk():
        return "a device"
    if member.isfifo():
        return "a fifo"
    return "not a regular file"


def _check_member_count(count: int) -> None:
    if count > ARCHIVE_MAX_MEMBERS:
        raise _archive_error(
            f"archive has more than {ARCHIVE_MAX_MEMBERS} members; an adapter needs 3 at most, a model a few more"
        )


def _safe_parts(name: str) -> tuple[str, ...]:
    if "\x00" in name or "\\" in name:
        raise _archive_error(f"member name {name!r} contains a backslash or NUL; use '/' separators")
    if name.startswith("/") or re.match(r"[A-Za-z]:", name):
        raise _archive_error(f"member {name} has an absolute path; only relative paths are allowed")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise _archive_error(f"member {name} has a '..' component; paths must stay inside the archive")
    if len(parts) > _ARCHIVE_MAX_DEPTH or any(len(p) > 255 for p in parts):
        raise _archive_error(f"member {name[:200]} is nested too deep or has too long a name")
    return parts


def _extract_members(members: Iterator[_Member], dest: Path, budget: _Budget) -> None:
    files: set[tuple[str, ...]] = set()
    dirs: set[tuple[str, ...]] = {()}
    for name, parts, kind, declared, opener in members:
        # Finder adds __MACOSX/ metadata to every zip it makes; it is never adapter content.
        if parts[:1] == ("__MACOSX",):
            continue
        _claim_path(name, parts, kind, files, dirs)
        target = dest.joinpath(*parts)
        if kind == "dir":
            target.mkdir(parents=True, exist_ok=True)
            continue
        # Refused from the header, before a byte of an oversized config or README is written.
        check_small_file(parts[-1], declared)
        check_small_model_file(parts[-1], declared)
        budget.declared += declared
        if budget.declared > budget.max_bytes:
            raise _too_big(budget)
        target.parent.mkdir(parents=True, exist_ok=True)
        assert opener is not None
        with opener() as src:
            _copy_counted(name, src, target, declared, budget)


def _claim_path(
    name: str,
    parts: tuple[str, ...],
    kind: str,
    files: set[tuple[str, ...]],
    dirs: set[tuple[str, ...]],
) -> None:
    # Refusing duplicates and file/folder clashes up front keeps writes from ever
    # replacing something already extracted.
    parents = {parts[:i] for i in range(len(parts))}
    if parts in files or (kind == "file" and parts in dirs) or parents & files:
        raise _archive_error(f"member {name} appears twice or clashes with another member")
    if kind == "file":
        files.add(parts)
        dirs.update(parents)
    else:
        dirs.update(parents | {parts})


def _copy_counted(name: str, src: IO[bytes], target: Path, declared: int, budget: _Budget) -> None:
    # Declared sizes can lie; the bytes that actually come out are what count.
    member_bytes = 0
    with target.open("xb") as dst:
        while chunk := src.read(_COPY_CHUNK):
            member_bytes += len(chunk)
            budget.written += len(chunk)
            if member_bytes > declared:
                raise _archive_error(f"member {name} holds more data than its header declares")
            if budget.written > budget.max_bytes:
                raise _too_big(budget)
            dst.write(chunk)


def _adapter_root(dest: Path) -> Path:
    if _holds_root_file(dest):
        return dest
    entries = sorted(p for p in dest.iterdir() if p.name != "__MACOSX")
    if len(entries) == 1 and entries[0].is_dir() and _holds_root_file(entries[0]):
        return entries[0]
    found = ", ".join(p.name for p in entries[:5]) or "nothing"
    raise _archive_error(
        f"archive must hold {CONFIG_FILE} (an adapter) or {MODEL_CONFIG} (a full model) at its top level or "
        f"inside a single top-level folder; found {found}"
    )


def _holds_root_file(folder: Path) -> bool:
    return (folder / CONFIG_FILE).is_file() or (folder / MODEL_CONFIG).is_file()


def _empty_dir(path: Path) -> None:
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _too_big(budget: _Budget) -> TailorError:
    return bad_request(
        f"archive unpacks to more than {budget.max_bytes} bytes, the largest accepted adapter",
        code="adapter_too_large",
    )


def _archive_error(message: str) -> TailorError:
    return bad_request(message, code="invalid_archive")
