"""Deterministic UIDs for derived series.

Reprocessing the same input with the same engine and settings must give the same UIDs, so a PACS
that receives the output twice (a retry, a restart) updates instead of duplicating. "The same
input" is the set of source SOP Instance UIDs, not only the source series: a series reopened by
a late slice is new input, and reusing the UIDs would leave the PACS holding old and new derived
instances mixed under one series. The series UID is a name-based UUID of (source series UID, a
hash of the sorted set of source SOP Instance UIDs, engine name, version, weights hash, settings
digest, output format) written as a ``2.25.`` UID (PS3.5 B.2), which needs no registered root;
with ``uid_root`` set, pydicom's hash-based ``generate_uid`` under that root is used instead.
Instance UIDs are derived the same way from the series UID and the instance number.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable

from pydicom.uid import generate_uid

from models.engine import EngineInfo

_NAMESPACE = uuid.UUID("1d3c6e8e-6d0b-5d8a-9f55-2f7a1e0b9c41")
"""Fixed namespace for our name-based UUIDs; never change it (UIDs would all change)."""


def uid_from(parts: list[str], root: str | None = None) -> str:
    """A UID that depends only on ``parts``."""
    if root:
        return str(generate_uid(prefix=root, entropy_srcs=parts))
    return f"2.25.{uuid.uuid5(_NAMESPACE, '|'.join(parts)).int}"


def source_set_digest(sop_instance_uids: Iterable[str]) -> str:
    """A hash of the set of source instances: order and repeats (frames of one object) ignored."""
    text = "\n".join(sorted(set(sop_instance_uids)))
    return hashlib.sha256(text.encode()).hexdigest()


def derived_series_uid(
    source_series_uid: str,
    source_instance_uids: Iterable[str],
    engine: EngineInfo,
    settings_digest: str,
    output_format: str,
    root: str | None = None,
) -> str:
    """The derived series' UID: same inputs (instances included), engine and settings, same UID."""
    parts = [
        "series",
        source_series_uid,
        source_set_digest(source_instance_uids),
        engine.name,
        engine.version,
        engine.weights_sha256 or "-",
        settings_digest,
        output_format,
    ]
    return uid_from(parts, root)


def derived_instance_uid(series_uid: str, instance_number: int, root: str | None = None) -> str:
    return uid_from(["instance", series_uid, str(instance_number)], root)
