"""``dicomnode.durable``, the one durable-write implementation (spool, worker outputs, model
registry): complete or absent, folders created with their names synced, nothing left over."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicomnode import durable


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Folders fsynced, in order (the real fsync still runs)."""
    calls: list[Path] = []
    real = durable.fsync_dir

    def record(folder: Path) -> None:
        calls.append(Path(folder))
        real(folder)

    monkeypatch.setattr(durable, "fsync_dir", record)
    return calls


def test_missing_folders_are_created_each_with_its_parent_synced(tmp_path: Path, synced):
    target = tmp_path / "a" / "b" / "c" / "file.bin"
    digest = hashlib.sha256()
    durable.write(target, [b"one ", b"two"], permissions=0o644, digest=digest)
    assert target.read_bytes() == b"one two"
    assert digest.hexdigest() == hashlib.sha256(b"one two").hexdigest()
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    # each new folder's name is synced in its parent, then the file's name in its folder
    assert synced == [tmp_path, tmp_path / "a", tmp_path / "a" / "b", target.parent]
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.bin"]


def test_existing_folders_cost_no_sync_and_the_temporary_goes_where_asked(tmp_path: Path, synced):
    tmp_dir = tmp_path / ".tmp"
    tmp_dir.mkdir()
    target = tmp_path / "out.dcm"
    durable.write(target, b"data", tmp_dir=tmp_dir)
    assert target.read_bytes() == b"data"
    assert synced == [tmp_path]
    assert list(tmp_dir.iterdir()) == []
    assert durable.make_dirs(tmp_path) is False


def test_default_permissions_respect_the_umask(tmp_path: Path):
    old = os.umask(0o077)
    try:
        durable.write(tmp_path / "private", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "private").stat().st_mode) == 0o600


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path):
    target = tmp_path / "weights.safetensors"
    durable.write(target, b"old")

    def chunks() -> Iterator[bytes]:
        yield b"new, but "
        raise OSError("the source went away")

    with pytest.raises(OSError, match="went away"):
        durable.write(target, chunks())
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["weights.safetensors"]


def test_replace_overwrites_and_a_failed_rename_removes_the_temporary(tmp_path: Path):
    target = tmp_path / "f"
    target.write_bytes(b"old")
    durable.replace(durable.write_temp(b"new", tmp_path), target)
    assert target.read_bytes() == b"new"
    (tmp_path / "dir").mkdir()
    tmp = durable.write_temp(b"x", tmp_path)
    with pytest.raises(OSError):
        durable.replace(tmp, tmp_path / "dir")  # a folder cannot be replaced by a file
    assert not tmp.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "f"]
