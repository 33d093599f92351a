"""Durable storage of received instances: temp file, fdatasync, link (or rename) into the spool,
fsync of the directory (the steps are ``dicomnode.durable``'s; the spool adds the free-space
floor and publication by hard link, which never overwrites).

Only after all four steps may the node answer Success, so that an acknowledged instance survives
a crash or a power cut. The free-space floor is checked first, because a nearly full disk also
starves the database and the pipeline; the caller maps ``OutOfSpace`` to status 0xA700.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from dicomnode import durable

_DIGITS_AND_DOTS = re.compile(r"[0-9]+(\.[0-9]+)*")


class OutOfSpace(Exception):
    """The disk is full or would fall below the configured free-space floor."""


@dataclass(frozen=True)
class SpoolLayout:
    root: Path
    quarantine: Path

    def ensure(self) -> None:
        for folder in (self.root, self.quarantine, self.root / ".tmp"):
            folder.mkdir(parents=True, exist_ok=True)

    def path_for(self, series_uid: str, sop_instance_uid: str) -> Path:
        return self.root / _safe(series_uid) / f"{_safe(sop_instance_uid)}.dcm"


def _safe(uid: str) -> str:
    """UIDs are digits and dots; anything else must not reach the filesystem as is."""
    if _DIGITS_AND_DOTS.fullmatch(uid):  # every valid UID: one regex, not a loop per char
        return uid
    cleaned = "".join(ch for ch in uid if ch in "0123456789.").strip(".")
    return cleaned or uuid.uuid4().hex


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def check_floor(path: Path, incoming: int, min_free_bytes: int) -> None:
    if free_bytes(path) - incoming < min_free_bytes:
        raise OutOfSpace(
            f"free space on {path} would fall below the floor of {min_free_bytes // 2**20} MiB"
        )


def write_durably(target: Path, data: bytes, tmp_dir: Path) -> None:
    """Write ``data`` to ``target`` so that it is either absent or complete after any crash."""
    try:
        durable.write(target, data, tmp_dir=tmp_dir)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OutOfSpace(f"disk full while writing {target.name}") from exc
        raise


def store_new(target: Path, data: bytes, tmp_dir: Path) -> bool:
    """Durably store ``data`` at ``target`` unless a file is already there; False if it was."""
    if target.exists():
        return False
    return publish(write_synced_temp(data, tmp_dir), target)


def publish(tmp: Path, target: Path) -> bool:
    """Give a synced temp file its spool name unless one is there already; False if it was.

    The existence test and the publication are one step (a hard link, which never overwrites),
    so two associations sending the same SOP Instance UID cannot both believe they stored it.
    That lets the spool itself answer "duplicate" without a database query. The temp name is
    always removed; one left by a crash is swept at the next start.
    """
    try:
        durable.make_dirs(target.parent)
        try:
            os.link(tmp, target)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            if target.exists():  # a filesystem without hard links: test, then rename
                return False
            os.replace(tmp, target)
        durable.fsync_dir(target.parent)
        return True
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OutOfSpace(f"disk full while writing {target.name}") from exc
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_synced_temp(data: bytes, tmp_dir: Path) -> Path:
    """``data`` in a new file under ``tmp_dir``, on disk (fdatasync) when this returns."""
    try:
        return durable.write_temp(data, tmp_dir)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OutOfSpace("disk full while writing a received instance") from exc
        raise


def clean_tmp(tmp_dir: Path) -> int:
    """Remove partial files a crash left behind; they were never acknowledged."""
    removed = 0
    for part in tmp_dir.glob(f"*{durable.TEMP_SUFFIX}"):
        part.unlink(missing_ok=True)
        removed += 1
    return removed
