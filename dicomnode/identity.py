"""Who we are on the wire: our Implementation Class UID and Implementation Version Name.

PS3.7 D.3.3.2 asks every implementation to name itself in its A-ASSOCIATE-RQ and -AC, and
PS3.10 7.1 puts the same two values in the file meta of every Part 10 file it writes, so that a
peer's log or a file's header says whose bytes these are.

The class UID sits under the ``2.25`` root (PS3.5 B.2: a UID made of a UUID's 128-bit integer),
derived from one UUID drawn once for dicomnode (``a48ccf55-1ba9-47a5-a6a9-33cdab57b9e9``). It
never changes: the version name tells releases apart.

Shared by every stage and importing nothing: the listener and the requestor (``net``) present
it, the worker and ``dicomnode enhance`` write it into the derived files' meta (``stamp``).
"""

from __future__ import annotations

import uuid
from importlib import metadata

IMPLEMENTATION_UUID = uuid.UUID("a48ccf55-1ba9-47a5-a6a9-33cdab57b9e9")
IMPLEMENTATION_CLASS_UID = f"2.25.{IMPLEMENTATION_UUID.int}"
VERSION_NAME_PREFIX = "DICOMNODE_"
VERSION_NAME_LIMIT = 16  # SH


def _package_version() -> str:
    try:
        return metadata.version("dicomnode")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "0"


IMPLEMENTATION_VERSION_NAME = (VERSION_NAME_PREFIX + _package_version())[:VERSION_NAME_LIMIT]


def stamp(dataset: object) -> None:
    """Name us in a dataset's file meta before it is written as a Part 10 file.

    pydicom (which builds the derived series in ``pipeline.derive``) would otherwise put its
    own implementation UID there, and the file would blame pydicom for our bytes.
    """
    meta = dataset.file_meta  # type: ignore[attr-defined]
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
