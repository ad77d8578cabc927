"""Blob storage for uploaded files, dataset snapshots and reports, on any fsspec URL.

The local directory under the data dir by default; an object store (s3://bucket/prefix)
when several gateways and trainers share state. Keys are slash-separated and validated,
so a caller cannot escape the root.
"""

from __future__ import annotations

import re
import uuid
from typing import TYPE_CHECKING

import fsspec
from fsspec.core import url_to_fs

from core.errors import TailorError

if TYPE_CHECKING:
    from core.config import Settings

_KEY = re.compile(r"^[A-Za-z0-9_.=-]+(/[A-Za-z0-9_.=-]+)*$")


def check_key(key: str) -> str:
    if not _KEY.match(key) or any(part in (".", "..") for part in key.split("/")):
        raise TailorError(400, f"invalid storage key {key!r}", code="invalid_key")
    return key


class BlobStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self.fs, root = url_to_fs(url)
        self.root = root.rstrip("/")
        self.is_local = isinstance(self.fs, fsspec.implementations.local.LocalFileSystem)
        if self.is_local:
            self.fs.makedirs(self.root, exist_ok=True)

    @classmethod
    def from_settings(cls, settings: Settings) -> BlobStore:
        return cls(settings.blob_store_url or "")

    def path(self, key: str) -> str:
        return f"{self.root}/{check_key(key)}"

    def put_bytes(self, key: str, data: bytes) -> None:
        target = self.path(key)
        parent = target.rsplit("/", 1)[0]
        if self.is_local:
            # Write-then-rename: readers never see a half-written blob.
            self.fs.makedirs(parent, exist_ok=True)
            tmp = f"{parent}/.tmp-{uuid.uuid4().hex}"
            with self.fs.open(tmp, "wb") as f:
                f.write(data)
            self.fs.mv(tmp, target)
        else:
            with self.fs.open(target, "wb") as f:
                f.write(data)

    def get_bytes(self, key: str) -> bytes:
        try:
            with self.fs.open(self.path(key), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise TailorError(404, f"stored object {key!r} not found", code="blob_not_found") from None

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self.path(key)))

    def delete(self, key: str) -> None:
        path = self.path(key)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def list(self, prefix: str) -> list[str]:
        base = self.path(prefix)
        if not self.fs.exists(base):
            return []
        return sorted(p[len(self.root) + 1 :] for p in self.fs.find(base))
