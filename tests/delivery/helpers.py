"""Node configuration with forward rules and a fast retry schedule, byte comparisons, and
sender items read from files."""

from __future__ import annotations

import sqlite3
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
from pynetdicom import AE, AllStoragePresentationContexts, evt

from dicomnode.deliver.sender import Item
from tests.node.helpers import RunningNode


@contextmanager
def scripted_pacs(port: int, answer: Callable[[evt.Event], int]) -> Iterator[list[str]]:
    """A pynetdicom storage SCP on 127.0.0.1:``port`` (AE ``PACS``) whose C-STORE status is
    ``answer(event)``, for statuses and aborts Orthanc cannot be made to give; yields the SOP
    Instance UIDs in the order they arrived."""
    seen: list[str] = []

    def on_store(event: evt.Event) -> int:
        seen.append(str(event.request.AffectedSOPInstanceUID))
        return answer(event)

    ae = AE(ae_title="PACS")
    ae.supported_contexts = AllStoragePresentationContexts
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    try:
        yield seen
    finally:
        server.shutdown()


LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UC", b"UR", b"UT", b"UN"}


def forward_rules(
    destinations: dict[str, int],
    max_attempts: int = 100,
    initial_backoff: float = 0.3,
    max_backoff: float = 1.0,
) -> str:
    """``[delivery]``, one ``[[destinations]]`` per (name, port) and a rule forwarding MR."""
    text = f"""
[delivery]
max_attempts = {max_attempts}
initial_backoff_seconds = {initial_backoff}
max_backoff_seconds = {max_backoff}
poll_interval_seconds = 0.1
connect_timeout_seconds = 2
stop_timeout_seconds = 10
"""
    for name, port in destinations.items():
        text += f"""
[[destinations]]
name = "{name}"
ae_title = "{name.upper()}"
host = "127.0.0.1"
port = {port}
"""
    names = ", ".join(f'"{n}"' for n in destinations)
    text += f"""
[[rules]]
name = "forward-mr"
match = {{ Modality = "MR" }}
action = "forward"
destinations = [{names}]
"""
    return text


def dataset_body(data: bytes) -> bytes:
    """The encoded dataset after the preamble and file meta (group 0002), which each writer
    (our spool, Orthanc) fills in its own way."""
    assert data[128:132] == b"DICM"
    offset = 132
    while True:
        group, _element = struct.unpack_from("<HH", data, offset)
        if group != 0x0002:
            return data[offset:]
        vr = data[offset + 4 : offset + 6]
        if vr in LONG_VRS:
            (length,) = struct.unpack_from("<I", data, offset + 8)
            offset += 12 + length
        else:
            (length,) = struct.unpack_from("<H", data, offset + 6)
            offset += 8 + length


def query(node: RunningNode, sql: str, *args: object) -> list[tuple]:
    with sqlite3.connect(node.data_dir / "dicomnode.sqlite3", timeout=30) as conn:
        return conn.execute(sql, args).fetchall()


def job_states(node: RunningNode) -> dict[int, str]:
    return {j["id"]: j["state"] for j in node.jobs()}


def delivered_events(node: RunningNode) -> list[tuple]:
    return query(node, "select job_id from job_events where to_state = 'delivered'")


def spooled(node: RunningNode) -> dict[str, Path]:
    return {uid: Path(p) for uid, p in query(node, "select sop_instance_uid, path from instances")}


def items_of(files: list[Path]) -> list[Item]:
    """Sender items keyed by path; the node builds them from its outbox rows instead."""
    items = []
    for path in files:
        meta = pydicom.dcmread(path, stop_before_pixels=True)
        items.append(
            Item(
                path,
                path,
                str(meta.SOPClassUID),
                str(meta.SOPInstanceUID),
                str(meta.file_meta.TransferSyntaxUID),
            )
        )
    return items
