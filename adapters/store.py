"""Content-addressed, immutable storage of adapter files on any fsspec filesystem.

A stored adapter version is named by its digest: the sha256 of a canonical list of its
files (name, size, sha256). The same bytes always get the same digest, so storing is
idempotent and a digest held in the database can never come to mean other weights.

Layout under the store's root: `<digest[:2]>/<digest>/<files>` plus `MANIFEST.json`.
The manifest is written last and is the commit: a version without one is incomplete and
invisible, which is how a crashed upload stays harmless on object stores, where there is
no rename. On a local filesystem a version is built in a temporary sibling directory and
renamed into place, so it appears whole or not at all.

Engines load adapters from local paths: a local store hands out its own directory, a
remote one (s3://, ..., or a gateway's over HTTP) is materialised once into the cache
directory, every file checked against the manifest, and reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from core.errors import TailorError, bad_request, not_found

if TYPE_CHECKING:
    from core.config import Settings

MANIFEST = "MANIFEST.json"
_MANIFEST_FORMAT = 1
_CHUNK = 1 << 20
_DIGEST = re.compile(r"[0-9a-f]{64}")
# Stored names become local paths when materialised; nothing that could climb out.
_FILE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,254}")


class CorruptAdapterError(TailorError):
    """A stored version's files no longer match its manifest (or its digest)."""

    def __init__(self, digest: str, detail: str) -> None:
        super().__init__(500, f"stored adapter {digest} is corrupt: {detail}", code="adapter_corrupt")
        self.digest = digest


@dataclass(frozen=True)
class StoredFile:
    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class StoredManifest:
    digest: str
    files: tuple[StoredFile, ...]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> bytes:
        body = {"format": _MANIFEST_FORMAT, "digest": self.digest, "files": _files_json(self.files)}
        return json.dumps(body, indent=2, sort_keys=True).encode("utf-8")


def check_digest(digest: str) -> str:
    """Return `digest` if it is a sha256 hex digest; refuse anything that could be a path."""
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise bad_request(
            f"invalid adapter digest {str(digest)[:80]!r}: expected 64 lowercase hex characters (a sha256)",
            code="invalid_digest",
            param="digest",
        )
    return digest


def digest_dir(local_dir: Path | str) -> str:
    """The digest a directory of adapter files would be stored under."""
    return digest_files(_hash_local_files(Path(local_dir)))


def digest_files(files: Iterable[StoredFile]) -> str:
    # Canonical form: sorted by name, fixed keys, no whitespace, so any writer agrees.
    canonical = json.dumps(_files_json(files), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _files_json(files: Iterable[StoredFile]) -> list[dict[str, Any]]:
    ordered = sorted(files, key=lambda f: f.name)
    return [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in ordered]


def _hash_local_files(local_dir: Path) -> list[StoredFile]:
    if not local_dir.is_dir():
        raise bad_request(f"{local_dir} is not a directory", code="invalid_adapter")
    files = []
    for entry in sorted(local_dir.iterdir()):
        # Adapters are flat (validation refuses folders and links); the store keeps it so.
        if entry.is_symlink() or not entry.is_file():
            raise bad_request(
                f"cannot store {entry.name}: only regular files directly in the adapter folder",
                code="invalid_adapter",
            )
        if entry.name == MANIFEST or not _FILE_NAME.fullmatch(entry.name):
            raise bad_request(f"cannot store a file named {entry.name!r}", code="invalid_adapter")
        with entry.open("rb") as f:
            size, sha = hash_stream(f)
        files.append(StoredFile(entry.name, size, sha))
    if not files:
        raise bad_request(f"{local_dir} holds no files to store", code="invalid_adapter")
    return files


def hash_stream(src: IO[bytes], dst: IO[bytes] | None = None, *, limit: int | None = None) -> tuple[int, str]:
    """Size and sha256 of a stream, copying it to `dst` on the way when given; with `limit`,
    reading stops once more than that many bytes came (the size then says "too long")."""
    sha, size = hashlib.sha256(), 0
    while chunk := src.read(_CHUNK):
        sha.update(chunk)
        size += len(chunk)
        if dst is not None:
            dst.write(chunk)
        if limit is not None and size > limit:
            break
    return size, sha.hexdigest()


class AdapterStore:
    """Immutable adapter versions under an fsspec URL (a plain path means a local folder)."""

    def __init__(self, url: str, cache_dir: Path | str, **storage_options: Any) -> None:
        # storage_options go to the fsspec filesystem (an engine reading Tailor's store over
        # HTTP passes its key's header there: adapters.adapter_source).
        self.url = url
        self.fs, root = url_to_fs(url, **storage_options)
        self.root = root.rstrip("/") or "/"
        self.cache_dir = Path(cache_dir)
        self.is_local = isinstance(self.fs, LocalFileSystem)
        # Object stores have no folders to make, and creating a bucket is not our job.
        if self.is_local:
            Path(self.root).mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_settings(cls, settings: Settings) -> AdapterStore:
        """The store at TAILOR_ADAPTER_STORE_URL, with this host's local copies under the cache dir."""
        return cls(settings.adapter_store_url or "", settings.cache_dir / "adapters")

    def __repr__(self) -> str:
        return f"AdapterStore({self.url!r})"

    # ---------------------------------------------------------------- paths

    def _version_path(self, digest: str) -> str:
        return f"{self.root}/{digest[:2]}/{digest}"

    def _manifest_path(self, digest: str) -> str:
        return f"{self._version_path(digest)}/{MANIFEST}"

    # ---------------------------------------------------------------- public API

    def exists(self, digest: str) -> bool:
        """Whether a complete version (its manifest written) is stored under `digest`."""
        return bool(self.fs.exists(self._manifest_path(check_digest(digest))))

    def put_dir(self, local_dir: Path | str) -> str:
        """Store a directory of adapter files and return its digest; no-op if already stored."""
        local_dir = Path(local_dir)
        files = _hash_local_files(local_dir)
        manifest = StoredManifest(digest=digest_files(files), files=tuple(files))
        if self.exists(manifest.digest):
            return manifest.digest
        if self.is_local:
            self._put_local(local_dir, manifest)
        else:
            self._put_remote(local_dir, manifest)
        return manifest.digest

    def manifest(self, digest: str) -> StoredManifest:
        """The stored manifest of a complete version; 404 when there is none."""
        check_digest(digest)
        try:
            raw = self.fs.cat_file(self._manifest_path(digest))
        except FileNotFoundError:
            raise not_found(f"adapter {digest} is not in the store", code="adapter_not_stored") from None
        return _parse_manifest(digest, raw)

    def verify(self, digest: str) -> None:
        """Re-hash every stored file; raise `CorruptAdapterError` if anything differs."""
        manifest = self.manifest(digest)
        version = self._version_path(digest)
        listed = {f.name for f in manifest.files} | {MANIFEST}
        present = {p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(version, detail=False)}
        if present - listed:
            raise CorruptAdapterError(digest, f"unexpected files {sorted(present - listed)}")
        for stored in manifest.files:
            try:
                with self.fs.open(f"{version}/{stored.name}", "rb") as f:
                    size, sha = hash_stream(f)
            except FileNotFoundError:
                raise CorruptAdapterError(digest, f"{stored.name} is missing") from None
            _check_file(digest, stored, size, sha)

    def local_path(self, digest: str) -> Path:
        """A local directory holding the version's files, for an engine to load."""
        check_digest(digest)
        if self.is_local:
            if not self.exists(digest):
                raise not_found(f"adapter {digest} is not in the store", code="adapter_not_stored")
            return Path(self._version_path(digest))
        cached = self.cache_dir / digest
        if _complete_copy(digest, cached):
            return cached
        return self._materialise(digest, cached)

    def delete(self, digest: str) -> None:
        """Remove a version (and its local cache). Deleting a missing version is a no-op."""
        check_digest(digest)
        version = self._version_path(digest)
        if self.is_local:
            _remove_local_dir(Path(version))
        else:
            # Manifest first: the version stops being complete before its files go.
            if self.fs.exists(self._manifest_path(digest)):
                self.fs.rm(self._manifest_path(digest))
            if self.fs.exists(version):
                self.fs.rm(version, recursive=True)
        _remove_local_dir(self.cache_dir / digest)

    # ---------------------------------------------------------------- writing

    def _put_local(self, local_dir: Path, manifest: StoredManifest) -> None:
        final = Path(self._version_path(manifest.digest))
        final.parent.mkdir(parents=True, exist_ok=True)
        # A final directory without a manifest was left by hand or by an old crash;
        # it can never become complete, so it is cleared for the new copy.
        if final.exists() and not (final / MANIFEST).exists():
            _remove_local_dir(final)
        tmp = final.parent / f".tmp-{manifest.digest}-{uuid.uuid4().hex}"
        try:
            tmp.mkdir()
            for stored in manifest.files:
                with (
                    (local_dir / stored.name).open("rb") as src,
                    (tmp / stored.name).open("xb") as dst,
                ):
                    _copy_checked(stored, src, dst)
                    dst.flush()
                    os.fsync(dst.fileno())
            _write_local_manifest(tmp, manifest)
            _commit_local_dir(tmp, final)
        finally:
            _remove_local_dir(tmp)

    def _put_remote(self, local_dir: Path, manifest: StoredManifest) -> None:
        version = self._version_path(manifest.digest)
        self.fs.makedirs(version, exist_ok=True)
        for stored in manifest.files:
            with (
                (local_dir / stored.name).open("rb") as src,
                self.fs.open(f"{version}/{stored.name}", "wb") as dst,
            ):
                _copy_checked(stored, src, dst)
        # Last, and the commit point. A concurrent writer of the same digest writes the
        # same bytes, so whichever manifest lands last is identical.
        self.fs.pipe_file(self._manifest_path(manifest.digest), manifest.to_json())

    # ---------------------------------------------------------------- reading

    def _materialise(self, digest: str, cached: Path) -> Path:
        manifest = self.manifest(digest)
        version = self._version_path(digest)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_dir / f".tmp-{digest}-{uuid.uuid4().hex}"
        try:
            tmp.mkdir()
            for stored in manifest.files:
                try:
                    with (
                        self.fs.open(f"{version}/{stored.name}", "rb") as src,
                        (tmp / stored.name).open("xb") as dst,
                    ):
                        # A longer source is cut at one byte past the size: it fails the check
                        # below without filling the disk first.
                        size, sha = hash_stream(src, dst, limit=stored.size)
                except FileNotFoundError:
                    raise CorruptAdapterError(digest, f"{stored.name} is missing") from None
                # Checked before the rename, so the cache only ever holds verified copies.
                _check_file(digest, stored, size, sha)
            _write_local_manifest(tmp, manifest)
            if _complete_copy(digest, cached):
                return cached  # another process (an engine's, a worker's) committed it meanwhile
            _remove_local_dir(cached)  # a cache dir without a whole copy is an old partial one
            _commit_local_dir(tmp, cached)
        finally:
            _remove_local_dir(tmp)
        return cached


def _copy_checked(stored: StoredFile, src: IO[bytes], dst: IO[bytes]) -> None:
    size, sha = hash_stream(src, dst)
    if (size, sha) != (stored.size, stored.sha256):
        # The source changed between hashing and copying; storing it would break the digest.
        raise TailorError(
            409,
            f"{stored.name} changed while it was being stored; try again",
            code="adapter_changed",
        )


def _check_file(digest: str, stored: StoredFile, size: int, sha: str) -> None:
    if size != stored.size:
        raise CorruptAdapterError(digest, f"{stored.name} is {size} bytes, expected {stored.size}")
    if sha != stored.sha256:
        raise CorruptAdapterError(digest, f"{stored.name} has sha256 {sha}, expected {stored.sha256}")


def _complete_copy(digest: str, cached: Path) -> bool:
    """Whether `cached` holds a whole local copy of `digest`: its manifest hashes to the digest
    and every listed file has its size. Cheap (no re-hashing): what it guards against is a
    half-removed or hand-made folder, not one rewritten byte by byte."""
    if cached.is_symlink() or not (cached / MANIFEST).is_file():
        return False
    try:
        manifest = _parse_manifest(digest, (cached / MANIFEST).read_bytes())
    except (CorruptAdapterError, OSError):
        return False
    for stored in manifest.files:
        path = cached / stored.name
        if path.is_symlink() or not path.is_file() or path.stat().st_size != stored.size:
            return False
    return True


def _parse_manifest(digest: str, raw: bytes) -> StoredManifest:
    try:
        body = json.loads(raw)
        files = tuple(
            StoredFile(name=str(f["name"]), size=int(f["size"]), sha256=str(f["sha256"])) for f in body["files"]
        )
    except (ValueError, TypeError, KeyError) as exc:
        raise CorruptAdapterError(digest, f"{MANIFEST} is unreadable ({exc})") from None
    for stored in files:
        if not _FILE_NAME.fullmatch(stored.name) or stored.name == MANIFEST:
            raise CorruptAdapterError(digest, f"{MANIFEST} lists an invalid file name {stored.name!r}")
    # The manifest must itself hash to the digest, or it was edited after the fact.
    if digest_files(files) != digest:
        raise CorruptAdapterError(digest, f"{MANIFEST} does not hash to the version's digest")
    return StoredManifest(digest=digest, files=files)


def _write_local_manifest(directory: Path, manifest: StoredManifest) -> None:
    with (directory / MANIFEST).open("xb") as f:
        f.write(manifest.to_json())
        f.flush()
        os.fsync(f.fileno())


def _commit_local_dir(tmp: Path, final: Path) -> None:
    try:
        os.rename(tmp, final)
    except OSError:
        # Another writer committed the same digest first: same bytes, so theirs will do.
        if (final / MANIFEST).is_file():
            return
        raise


def _remove_local_dir(path: Path) -> None:
    if not path.exists():
        return
    # Rename first so the directory vanishes at once rather than file by file.
    doomed = path.with_name(f".del-{path.name}-{uuid.uuid4().hex}")
    try:
        os.rename(path, doomed)
    except FileNotFoundError:
        return
    shutil.rmtree(doomed, ignore_errors=True)
