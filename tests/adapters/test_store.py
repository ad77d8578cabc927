"""Tests for adapters.store: content addressing, commit-by-manifest, caching, tampering.

Every behaviour runs twice: on a local folder (the default deployment) and on fsspec's
in-memory filesystem, which goes through the same code path as s3:// (no rename, files
materialised into the cache).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import fsspec
import pytest

from adapters.store import MANIFEST, AdapterStore, CorruptAdapterError, digest_dir
from core.errors import TailorError


@pytest.fixture
def adapter_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "adapter"
    directory.mkdir()
    (directory / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    (directory / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 4096)
    (directory / "README.md").write_text("# support\n")
    return directory


@pytest.fixture(params=["local", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AdapterStore]:
    if request.param == "local":
        yield AdapterStore(str(tmp_path / "store"), cache_dir=tmp_path / "cache")
        return
    url = f"memory://tailor-test-{uuid.uuid4().hex}"
    yield AdapterStore(url, cache_dir=tmp_path / "cache")
    memory = fsspec.filesystem("memory")
    root = fsspec.core.url_to_fs(url)[1]
    if memory.exists(root):
        memory.rm(root, recursive=True)


@pytest.fixture
def remote_store(tmp_path: Path) -> Iterator[AdapterStore]:
    url = f"memory://tailor-test-{uuid.uuid4().hex}"
    store = AdapterStore(url, cache_dir=tmp_path / "cache")
    yield store
    if store.fs.exists(store.root):
        store.fs.rm(store.root, recursive=True)


def stored_file(store: AdapterStore, digest: str, name: str) -> str:
    return f"{store.root}/{digest[:2]}/{digest}/{name}"


# --------------------------------------------------------------------------- digests


def test_digest_is_content_addressed(adapter_dir: Path, tmp_path: Path) -> None:
    digest = digest_dir(adapter_dir)
    assert len(digest) == 64 and digest == digest.lower()
    assert digest_dir(adapter_dir) == digest

    # Same files elsewhere, written in another order: same digest.
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in sorted(adapter_dir.iterdir(), reverse=True):
        (copy / path.name).write_bytes(path.read_bytes())
    assert digest_dir(copy) == digest

    (copy / "README.md").write_text("# support v2\n")
    assert digest_dir(copy) != digest

    (copy / "README.md").rename(copy / "README.txt")
    assert digest_dir(copy) not in (digest, digest_dir(adapter_dir))


# --------------------------------------------------------------------------- put / exists


def test_put_dir_stores_a_complete_version(store: AdapterStore, adapter_dir: Path) -> None:
    digest = store.put_dir(adapter_dir)
    assert digest == digest_dir(adapter_dir)
    assert store.exists(digest)
    manifest = json.loads(store.fs.cat_file(stored_file(store, digest, MANIFEST)))
    assert manifest["digest"] == digest
    assert [f["name"] for f in manifest["files"]] == sorted(p.name for p in adapter_dir.iterdir())
    for entry in manifest["files"]:
        assert (
            store.fs.cat_file(stored_file(store, digest, entry["name"])) == (adapter_dir / entry["name"]).read_bytes()
        )
    assert store.manifest(digest).total_bytes == sum(p.stat().st_size for p in adapter_dir.iterdir())
    store.verify(digest)


def test_put_dir_is_idempotent(store: AdapterStore, adapter_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    digest = store.put_dir(adapter_dir)

    def no_upload(*args: object, **kwargs: object) -> None:
        raise AssertionError("an already stored version must not be written again")

    monkeypatch.setattr(store, "_put_local", no_upload)
    monkeypatch.setattr(store, "_put_remote", no_upload)
    assert store.put_dir(adapter_dir) == digest


def test_unknown_digest(store: AdapterStore) -> None:
    digest = "ab" * 32
    assert not store.exists(digest)
    for call in (store.local_path, store.verify, store.manifest):
        with pytest.raises(TailorError) as info:
            call(digest)
        assert info.value.status == 404
    store.delete(digest)  # deleting what is not there is not an error


@pytest.mark.parametrize(
    "digest",
    ["../../etc/passwd", "A" * 64, "g" * 64, "ab", "0" * 63, "0" * 65, "0" * 64 + "/x", ""],
)
@pytest.mark.parametrize("method", ["exists", "verify", "local_path", "delete", "manifest"])
def test_invalid_digest_is_refused(store: AdapterStore, digest: str, method: str) -> None:
    with pytest.raises(TailorError) as info:
        getattr(store, method)(digest)
    assert info.value.status == 400
    assert info.value.code == "invalid_digest"


@pytest.mark.parametrize("bad", ["folder", "symlink", MANIFEST, "empty"])
def test_put_dir_refuses_what_it_cannot_store(store: AdapterStore, adapter_dir: Path, tmp_path: Path, bad: str) -> None:
    if bad == "folder":
        (adapter_dir / "sub").mkdir()
    elif bad == "symlink":
        (adapter_dir / "link").symlink_to(adapter_dir / "README.md")
    elif bad == MANIFEST:
        (adapter_dir / MANIFEST).write_text("{}")
    else:
        adapter_dir = tmp_path / "empty"
        adapter_dir.mkdir()
    with pytest.raises(TailorError) as info:
        store.put_dir(adapter_dir)
    assert info.value.status == 400


# --------------------------------------------------------------------------- local store


def test_local_store_hands_out_its_own_directory(tmp_path: Path, adapter_dir: Path) -> None:
    store = AdapterStore(str(tmp_path / "store"), cache_dir=tmp_path / "cache")
    digest = store.put_dir(adapter_dir)
    path = store.local_path(digest)
    assert path == tmp_path / "store" / digest[:2] / digest
    assert (path / "adapter_model.safetensors").read_bytes() == (adapter_dir / "adapter_model.safetensors").read_bytes()
    assert not (tmp_path / "cache").exists()  # no copy was made
    # No temporary directories are left next to the version.
    assert [p.name for p in path.parent.iterdir()] == [digest]


def test_local_store_accepts_file_urls(tmp_path: Path, adapter_dir: Path) -> None:
    store = AdapterStore(f"file://{tmp_path / 'store'}", cache_dir=tmp_path / "cache")
    assert store.is_local
    digest = store.put_dir(adapter_dir)
    assert store.local_path(digest) == tmp_path / "store" / digest[:2] / digest


def test_local_concurrent_writers_of_one_digest(
    tmp_path: Path, adapter_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = AdapterStore(str(tmp_path / "store"), cache_dir=tmp_path / "cache")
    digest = store.put_dir(adapter_dir)
    # A second writer that checked `exists` before the first committed loses the rename
    # race; it must accept the winner's copy and clean up after itself.
    monkeypatch.setattr(store, "exists", lambda d: False)
    assert store.put_dir(adapter_dir) == digest
    assert [p.name for p in (tmp_path / "store" / digest[:2]).iterdir()] == [digest]
    store.verify(digest)


def test_local_threads_storing_the_same_adapter(tmp_path: Path, adapter_dir: Path) -> None:
    store = AdapterStore(str(tmp_path / "store"), cache_dir=tmp_path / "cache")
    with ThreadPoolExecutor(max_workers=8) as pool:
        digests = set(pool.map(lambda _: store.put_dir(adapter_dir), range(16)))
    assert digests == {digest_dir(adapter_dir)}
    (digest,) = digests
    assert [p.name for p in (tmp_path / "store" / digest[:2]).iterdir()] == [digest]
    store.verify(digest)


def test_local_half_written_version_is_replaced(tmp_path: Path, adapter_dir: Path) -> None:
    store = AdapterStore(str(tmp_path / "store"), cache_dir=tmp_path / "cache")
    digest = digest_dir(adapter_dir)
    leftover = tmp_path / "store" / digest[:2] / digest
    leftover.mkdir(parents=True)
    (leftover / "adapter_model.safetensors").write_bytes(b"half")
    assert not store.exists(digest)
    assert store.put_dir(adapter_dir) == digest
    store.verify(digest)


# --------------------------------------------------------------------------- remote store


def test_remote_store_materialises_once(
    remote_store: AdapterStore, adapter_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not remote_store.is_local
    digest = remote_store.put_dir(adapter_dir)
    path = remote_store.local_path(digest)
    assert path == tmp_path / "cache" / digest
    for source in adapter_dir.iterdir():
        assert (path / source.name).read_bytes() == source.read_bytes()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [digest]

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cached version must not be downloaded again")

    monkeypatch.setattr(remote_store.fs, "open", no_download)
    assert remote_store.local_path(digest) == path


def test_remote_manifest_is_written_last(
    remote_store: AdapterStore, adapter_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs = remote_store.fs
    writes: list[str] = []
    real_open, real_pipe = fs.open, fs.pipe_file

    def recording_open(path: str, mode: str = "rb", *args: object, **kwargs: object):
        if "w" in mode:
            writes.append(path.rsplit("/", 1)[-1])
        return real_open(path, mode, *args, **kwargs)

    def recording_pipe(path: str, *args: object, **kwargs: object):
        # Some filesystems implement pipe_file with open(); record each write once.
        writes.append(path.rsplit("/", 1)[-1])
        result = real_pipe(path, *args, **kwargs)
        if writes[-2:] == [writes[-1]] * 2:
            writes.pop()
        return result

    monkeypatch.setattr(fs, "open", recording_open)
    monkeypatch.setattr(fs, "pipe_file", recording_pipe)
    remote_store.put_dir(adapter_dir)
    assert writes[-1] == MANIFEST
    assert sorted(writes[:-1]) == sorted(p.name for p in adapter_dir.iterdir())


def test_remote_upload_interrupted_is_not_a_version(
    remote_store: AdapterStore, adapter_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs = remote_store.fs
    real_open = fs.open
    opened: list[str] = []

    def failing_open(path: str, mode: str = "rb", *args: object, **kwargs: object):
        if "w" in mode:
            opened.append(path)
            if len(opened) == 2:
                raise OSError("connection reset")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(fs, "open", failing_open)
    with pytest.raises(OSError):
        remote_store.put_dir(adapter_dir)
    digest = digest_dir(adapter_dir)
    assert fs.exists(opened[0])  # one file did land...
    assert not remote_store.exists(digest)  # ...but without a manifest it is no version
    with pytest.raises(TailorError) as info:
        remote_store.local_path(digest)
    assert info.value.status == 404

    monkeypatch.setattr(fs, "open", real_open)
    assert remote_store.put_dir(adapter_dir) == digest
    remote_store.verify(digest)


def test_remote_tampering_is_caught_before_caching(
    remote_store: AdapterStore, adapter_dir: Path, tmp_path: Path
) -> None:
    digest = remote_store.put_dir(adapter_dir)
    remote_store.fs.pipe_file(stored_file(remote_store, digest, "adapter_model.safetensors"), b"evil weights")
    with pytest.raises(CorruptAdapterError):
        remote_store.local_path(digest)
    cache = tmp_path / "cache"
    assert not cache.exists() or list(cache.iterdir()) == []


def test_delete_removes_version_and_cache(remote_store: AdapterStore, adapter_dir: Path) -> None:
    digest = remote_store.put_dir(adapter_dir)
    cached = remote_store.local_path(digest)
    remote_store.delete(digest)
    assert not remote_store.exists(digest)
    assert not cached.exists()
    assert not remote_store.fs.exists(f"{remote_store.root}/{digest[:2]}/{digest}")
    assert remote_store.put_dir(adapter_dir) == digest  # storable again afterwards


# --------------------------------------------------------------------------- verify


def test_delete_local(store: AdapterStore, adapter_dir: Path) -> None:
    digest = store.put_dir(adapter_dir)
    store.delete(digest)
    assert not store.exists(digest)
    with pytest.raises(TailorError):
        store.local_path(digest)


@pytest.mark.parametrize("tamper", ["edit", "remove", "extra", "manifest"])
def test_verify_detects_tampering(store: AdapterStore, adapter_dir: Path, tamper: str) -> None:
    digest = store.put_dir(adapter_dir)
    weights = stored_file(store, digest, "adapter_model.safetensors")
    if tamper == "edit":
        data = bytearray(store.fs.cat_file(weights))
        data[100] ^= 0xFF  # same size, different bytes
        store.fs.pipe_file(weights, bytes(data))
    elif tamper == "remove":
        store.fs.rm(weights)
    elif tamper == "extra":
        store.fs.pipe_file(stored_file(store, digest, "adapter_model.bin"), b"pickle")
    else:
        manifest = json.loads(store.fs.cat_file(stored_file(store, digest, MANIFEST)))
        manifest["files"][0]["size"] += 1
        store.fs.pipe_file(stored_file(store, digest, MANIFEST), json.dumps(manifest).encode())
    with pytest.raises(CorruptAdapterError) as info:
        store.verify(digest)
    assert info.value.status == 500
    assert info.value.code == "adapter_corrupt"
    assert digest in info.value.message
