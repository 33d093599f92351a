"""Durable file writes, the one implementation every stage uses.

A file written here is, after any crash or power cut, either absent (or still its previous
version) or complete: the bytes go to a temporary file, which is synced (fdatasync: data and
size), then renamed (or, for the spool, hard-linked) to its name, and the folder holding the
name is fsynced. Missing folders are created one by one, each new folder's parent fsynced, so
that no committed database row can point at a name a power cut took away.

The temporary file lies in the target's own folder unless the caller names another on the same
filesystem (the spool keeps its temporaries in ``spool/.tmp``, which it sweeps at start:
``*.part`` is the only name a temporary ever has).

Users: ``dicomnode.receive.spool`` (every received instance, so the common path costs one stat,
one open, the writes, one fdatasync, the rename and one directory fsync), the worker's derived
instances and the model registry's weights and cards (streamed in chunks, hashed on the way).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

TEMP_SUFFIX = ".part"
DEFAULT_MODE = 0o640
"""Permissions a new file is created with, less the process umask."""


class Digest(Protocol):
    """What ``hashlib`` objects offer: fed every chunk written."""

    def update(self, data: bytes, /) -> None: ...


def fsync_dir(folder: Path) -> None:
    """Make the entries of ``folder`` (created, renamed, linked, removed names) durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(folder: Path) -> bool:
    """Create ``folder`` and its missing parents, fsyncing the parent of each new one.

    Returns whether anything was created. An existing folder costs one stat.
    """
    if folder.exists():
        return False
    missing = []
    current = folder
    while not current.exists():
        missing.append(current)
        current = current.parent
    for new in reversed(missing):
        try:
            new.mkdir()
        except FileExistsError:  # made by a concurrent writer; it syncs its own entry
            continue
        fsync_dir(new.parent)
    return True


def write_temp(
    data: bytes | Iterable[bytes],
    folder: Path,
    *,
    permissions: int | None = None,
    digest: Digest | None = None,
) -> Path:
    """``data`` (bytes, or chunks streamed one by one) in a new ``*.part`` file in ``folder``,
    on disk when this returns; the file is removed again if anything fails.

    ``permissions``: exact mode bits whatever the umask (files other users' processes read);
    otherwise the file gets ``DEFAULT_MODE`` less the umask. ``digest`` sees every byte written.
    """
    tmp = folder / f"{uuid.uuid4().hex}{TEMP_SUFFIX}"
    chunks = (data,) if isinstance(data, bytes | bytearray | memoryview) else data
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, DEFAULT_MODE)
        try:
            for chunk in chunks:
                if digest is not None:
                    digest.update(chunk)
                view = memoryview(chunk)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
            if permissions is not None:
                os.fchmod(fd, permissions)
            os.fdatasync(fd)  # data and size; the name is made durable by the folder's fsync
        finally:
            os.close(fd)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def replace(tmp: Path, target: Path) -> None:
    """Give the synced ``tmp`` the name ``target`` (over any old file there), durably.

    ``tmp`` must be on the same filesystem; it is removed if the rename fails.
    """
    try:
        make_dirs(target.parent)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def write(
    target: Path,
    data: bytes | Iterable[bytes],
    *,
    tmp_dir: Path | None = None,
    permissions: int | None = None,
    digest: Digest | None = None,
) -> None:
    """Write ``data`` to ``target`` atomically and durably: a reader (or the disk after a crash)
    has the old file or the complete new one, never a torn one.

    The temporary file goes in ``tmp_dir`` (same filesystem) or else the target's folder, which
    is created (durably) if missing.
    """
    if tmp_dir is None:
        make_dirs(target.parent)
    tmp = write_temp(data, tmp_dir or target.parent, permissions=permissions, digest=digest)
    replace(tmp, target)
