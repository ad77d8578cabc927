"""Tests for adapters.archives: the .zip, .tar and .tar.gz uploads an adapter may come in,
unpacked safely (no traversal, links, special files, bombs or lies about sizes) before the
directory they hold is judged by adapters.validation."""

from __future__ import annotations

import io
import os
import struct
import tarfile
import zipfile
from pathlib import Path

import pytest

from adapters.archives import extract_archive
from adapters.validation import BaseModelSpec
from core.errors import TailorError
from tests.adapters.test_validation import MAX_BYTES, tiny_base, validate, write_adapter


@pytest.fixture
def base(tmp_path: Path) -> BaseModelSpec:
    return tiny_base(tmp_path)


def _adapter_files(tmp_path: Path) -> dict[str, bytes]:
    adapter = write_adapter(tmp_path / "src-adapter")
    return {p.name: p.read_bytes() for p in adapter.iterdir()}


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name) if name.endswith("/") else name, data)
    return path


def make_tar(path: Path, members: dict[str, bytes], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def add_tar_special(path: Path, info: tarfile.TarInfo, mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tf:
        tf.addfile(info)
    return path


def refused_archive(archive: Path, dest: Path, max_bytes: int = MAX_BYTES) -> TailorError:
    with pytest.raises(TailorError) as info:
        extract_archive(archive, dest, max_bytes=max_bytes)
    assert info.value.status == 400
    # A refused archive leaves nothing behind.
    assert not dest.exists() or not any(dest.iterdir())
    return info.value


def test_zip_with_top_level_folder(tmp_path: Path, base: BaseModelSpec) -> None:
    files = _adapter_files(tmp_path)
    archive = make_zip(tmp_path / "up.zip", {"support/": b"", **{f"support/{n}": d for n, d in files.items()}})
    root = extract_archive(archive, tmp_path / "out", max_bytes=MAX_BYTES)
    assert root == tmp_path / "out" / "support"
    assert validate(root, base).rank == 4


def test_tar_gz_detected_by_content_with_dot_prefix(tmp_path: Path, base: BaseModelSpec) -> None:
    files = _adapter_files(tmp_path)
    # Misleading name on purpose: the format is sniffed, not guessed from the suffix.
    archive = make_tar(tmp_path / "upload.zip", {f"./my-adapter/{n}": d for n, d in files.items()})
    root = extract_archive(archive, tmp_path / "out", max_bytes=MAX_BYTES)
    assert root == tmp_path / "out" / "my-adapter"
    assert validate(root, base).files == ("adapter_config.json", "adapter_model.safetensors")


def test_plain_tar_with_files_at_top_level(tmp_path: Path, base: BaseModelSpec) -> None:
    archive = make_tar(tmp_path / "up.tar", _adapter_files(tmp_path), mode="w")
    root = extract_archive(archive, tmp_path / "out", max_bytes=MAX_BYTES)
    assert root == tmp_path / "out"
    validate(root, base)


def test_zip_from_finder_ignores_macosx_metadata(tmp_path: Path) -> None:
    files = _adapter_files(tmp_path)
    members = {f"a/{n}": d for n, d in files.items()} | {"__MACOSX/a/._adapter_config.json": b"x"}
    root = extract_archive(make_zip(tmp_path / "up.zip", members), tmp_path / "out", max_bytes=MAX_BYTES)
    assert root == tmp_path / "out" / "a"


@pytest.mark.parametrize("maker", [make_zip, make_tar])
def test_parent_traversal_is_refused(tmp_path: Path, maker) -> None:
    archive = maker(tmp_path / "evil", {"a/adapter_config.json": b"{}", "a/../../evil.txt": b"x"})
    error = refused_archive(archive, tmp_path / "out")
    assert "'..'" in error.message
    assert not (tmp_path / "evil.txt").exists()


@pytest.mark.parametrize("maker", [make_zip, make_tar])
def test_absolute_path_is_refused(tmp_path: Path, maker) -> None:
    archive = maker(tmp_path / "evil", {"/tmp/evil.txt": b"x"})
    assert "absolute path" in refused_archive(archive, tmp_path / "out").message


def test_tar_symlink_is_refused(tmp_path: Path) -> None:
    info = tarfile.TarInfo("a/adapter_config.json")
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    archive = add_tar_special(tmp_path / "evil.tar", info)
    assert "symlink" in refused_archive(archive, tmp_path / "out").message


def test_tar_hardlink_is_refused(tmp_path: Path) -> None:
    info = tarfile.TarInfo("a/adapter_config.json")
    info.type, info.linkname = tarfile.LNKTYPE, "/etc/passwd"
    archive = add_tar_special(tmp_path / "evil.tar", info)
    assert "hard link" in refused_archive(archive, tmp_path / "out").message


@pytest.mark.parametrize(("kind", "words"), [(tarfile.FIFOTYPE, "fifo"), (tarfile.CHRTYPE, "device")])
def test_tar_special_files_are_refused(tmp_path: Path, kind: bytes, words: str) -> None:
    info = tarfile.TarInfo("a/dev")
    info.type = kind
    archive = add_tar_special(tmp_path / "evil.tar", info)
    assert words in refused_archive(archive, tmp_path / "out").message


def test_zip_symlink_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("a/adapter_model.safetensors")
        info.create_system = 3
        info.external_attr = 0o120777 << 16
        zf.writestr(info, "/etc/passwd")
    assert "symlink" in refused_archive(archive, tmp_path / "out").message


def test_zip_bomb_is_refused_by_declared_size(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "bomb.zip", {"a/adapter_model.safetensors": b"\0" * 2_000_000})
    assert archive.stat().st_size < 20_000
    error = refused_archive(archive, tmp_path / "out", max_bytes=1_000_000)
    assert "unpacks to more than 1000000 bytes" in error.message


def test_tar_bomb_is_refused_across_members(tmp_path: Path) -> None:
    members = {f"a/part{i}": b"\0" * 400_000 for i in range(5)}
    error = refused_archive(make_tar(tmp_path / "bomb.tgz", members), tmp_path / "out", max_bytes=1_000_000)
    assert "unpacks to more than" in error.message


def test_zip_lying_about_its_size_is_refused(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "liar.zip", {"a/adapter_model.safetensors": b"\0" * 500_000})
    data = bytearray(archive.read_bytes())
    # Claim 10 bytes in both the local header and the central directory.
    local = data.index(b"PK\x03\x04")
    struct.pack_into("<I", data, local + 22, 10)
    central = data.index(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 24, 10)
    archive.write_bytes(bytes(data))
    refused_archive(archive, tmp_path / "out", max_bytes=1_000)


@pytest.mark.parametrize("maker", [make_zip, make_tar])
def test_archive_with_oversized_readme_is_refused_before_unpacking(tmp_path: Path, maker) -> None:
    # A few hundred KB of gzip can carry hundreds of MB of README; the header says so.
    members = {**_adapter_files(tmp_path), "README.md": b"\0" * 5_000_000}
    archive = maker(tmp_path / "pad.bin", members)
    assert archive.stat().st_size < 200_000
    error = refused_archive(archive, tmp_path / "out")
    assert error.code == "adapter_file_too_large" and "README.md" in error.message


def test_too_many_members(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "many.zip", {f"a/f{i}": b"x" for i in range(65)})
    assert "more than 64 members" in refused_archive(archive, tmp_path / "out").message


def test_duplicate_members_are_refused(tmp_path: Path) -> None:
    archive = tmp_path / "dup.tar"
    with tarfile.open(archive, "w") as tf:
        for data in (b"{}", b"{2}"):
            info = tarfile.TarInfo("a/adapter_config.json")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    assert "twice" in refused_archive(archive, tmp_path / "out").message


def test_two_top_level_folders_are_refused(tmp_path: Path) -> None:
    files = _adapter_files(tmp_path)
    members = {f"a/{n}": d for n, d in files.items()} | {"b/README.md": b"x"}
    error = refused_archive(make_zip(tmp_path / "two.zip", members), tmp_path / "out")
    assert "single top-level folder" in error.message


@pytest.mark.parametrize("suffix", [".zip", ".tar.gz"])
def test_truncated_archive_is_refused(tmp_path: Path, suffix: str) -> None:
    files = {f"a/{n}": d for n, d in _adapter_files(tmp_path).items()}
    maker = make_zip if suffix == ".zip" else make_tar
    archive = maker(tmp_path / f"cut{suffix}", files)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    assert "corrupt" in refused_archive(archive, tmp_path / "out").message


def test_unknown_format_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "x.zip"
    archive.write_bytes(os.urandom(2048))
    assert "unsupported archive format" in refused_archive(archive, tmp_path / "out").message


def test_dest_must_be_empty(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "keep").write_text("x")
    archive = make_zip(tmp_path / "a.zip", {"a/adapter_config.json": b"{}"})
    with pytest.raises(ValueError):
        extract_archive(archive, dest, max_bytes=MAX_BYTES)
    assert (dest / "keep").exists()
