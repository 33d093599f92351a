"""DICOM Upper Layer pieces shared by our association requestor (``scu``) and acceptor (``scp``).

Only what the standard fixes byte for byte and what sits on the per-instance hot path lives
here: PDU framing (PS3.8 9.3), P-DATA-TF items, and command sets in implicit VR little endian
(PS3.7 E.2 and 9.3/9.1.5). Everything that negotiates (A-ASSOCIATE-RQ/AC/RJ, presentation
contexts) stays with pynetdicom's PDU classes, which have the rules right.
"""

from __future__ import annotations

import socket
import ssl
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.pdu_primitives import (
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
)

PDU_ASSOCIATE_RQ = 0x01
PDU_ASSOCIATE_AC = 0x02
PDU_ASSOCIATE_RJ = 0x03
PDU_DATA = 0x04
PDU_RELEASE_RQ = 0x05
PDU_RELEASE_RP = 0x06
PDU_ABORT = 0x07

PDV_OVERHEAD = 6  # item length (4), context id (1), message control header (1)
MAX_GATHER = 512  # buffers per sendmsg call; the kernel takes at most IOV_MAX (1024)

CONTROL_COMMAND = 0x01  # message control header, bit 0: command (1) or dataset (0)
CONTROL_LAST = 0x02  # bit 1: last fragment of the command or dataset
CONTROL_DATASET = 0x00

C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
C_ECHO_RQ = 0x0030
C_ECHO_RSP = 0x8030
C_CANCEL_RQ = 0x0FFF
DATASET_PRESENT = 0x0000  # CommandDataSetType: anything but 0x0101
NO_DATASET = 0x0101

TAG_AFFECTED_SOP_CLASS = 0x0002
TAG_COMMAND_FIELD = 0x0100
TAG_MESSAGE_ID = 0x0110
TAG_MESSAGE_ID_RESPONDED = 0x0120
TAG_PRIORITY = 0x0700
TAG_DATASET_TYPE = 0x0800
TAG_STATUS = 0x0900
TAG_ERROR_COMMENT = 0x0902
TAG_AFFECTED_SOP_INSTANCE = 0x1000


class PeerClosed(Exception):
    """The peer closed the TCP connection."""


class ProtocolError(Exception):
    """Bytes that do not follow the Upper Layer protocol; the association must be aborted."""


def element(tag_element: int, value: bytes, pad: bytes = b"\x00") -> bytes:
    """One group-0000 element in implicit VR little endian, padded to an even length."""
    if len(value) % 2:
        value += pad
    return struct.pack("<HHI", 0x0000, tag_element, len(value)) + value


def us(value: int) -> bytes:
    return struct.pack("<H", value)


def command_set(*elements: bytes) -> bytes:
    """Elements (in ascending tag order) preceded by the CommandGroupLength."""
    body = b"".join(elements)
    return element(0x0000, struct.pack("<I", len(body))) + body


@dataclass(frozen=True)
class Command:
    """The fields of a received command set that an acceptor or requestor acts on."""

    field: int
    message_id: int | None
    responded_to: int | None
    sop_class_uid: str
    sop_instance_uid: str
    has_dataset: bool
    status: int | None
    error_comment: str | None


def parse_command(data: bytes) -> Command:
    """Decode a command set; ProtocolError when it is truncated or lacks its CommandField."""
    values: dict[int, bytes] = {}
    offset = 0
    end = len(data)
    while offset < end:
        if offset + 8 > end:
            raise ProtocolError("truncated command set element")
        group, tag_element, length = struct.unpack_from("<HHI", data, offset)
        offset += 8
        if group != 0x0000 or offset + length > end:
            raise ProtocolError(f"invalid command set element ({group:04X},{tag_element:04X})")
        values[tag_element] = data[offset : offset + length]
        offset += length

    def number(tag: int) -> int | None:
        raw = values.get(tag)
        if raw is None:
            return None
        if len(raw) != 2:
            raise ProtocolError(f"command element (0000,{tag:04X}) is not a US")
        return int(struct.unpack("<H", raw)[0])

    def text(tag: int) -> str:
        return values.get(tag, b"").rstrip(b"\x00 ").decode("ascii", errors="replace")

    field = number(TAG_COMMAND_FIELD)
    if field is None:
        raise ProtocolError("command set without CommandField")
    comment = text(TAG_ERROR_COMMENT)
    return Command(
        field=field,
        message_id=number(TAG_MESSAGE_ID),
        responded_to=number(TAG_MESSAGE_ID_RESPONDED),
        sop_class_uid=text(TAG_AFFECTED_SOP_CLASS),
        sop_instance_uid=text(TAG_AFFECTED_SOP_INSTANCE),
        has_dataset=number(TAG_DATASET_TYPE) not in (None, NO_DATASET),
        status=number(TAG_STATUS),
        error_comment=comment or None,
    )


def user_information(
    maximum_pdu: int,
) -> list[
    MaximumLengthNotification
    | ImplementationClassUIDNotification
    | ImplementationVersionNameNotification
]:
    """The user information items our requestor sends (PS3.7 D.3.3); the listener writes the
    same three itself in ``acse.acceptance``."""
    maximum = MaximumLengthNotification()
    maximum.maximum_length_received = maximum_pdu
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = PYNETDICOM_IMPLEMENTATION_UID
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = PYNETDICOM_IMPLEMENTATION_VERSION
    return [maximum, implementation, version]


def pdv_header(context_id: int, control: int, size: int) -> bytes:
    """P-DATA-TF PDU header holding exactly one PDV item of ``size`` data bytes."""
    return struct.pack(">BBIIBB", PDU_DATA, 0, size + PDV_OVERHEAD, size + 2, context_id, control)


def frame(
    buffers: list[bytes | memoryview],
    context_id: int,
    data: bytes | memoryview,
    fragment: int,
    command: bool,
    ends: bool,
) -> None:
    """Append ``data`` as P-DATA-TF PDUs of one PDV each, at most ``fragment`` bytes of data
    apiece; the last one carries the last-fragment bit when ``ends``."""
    kind = CONTROL_COMMAND if command else CONTROL_DATASET
    for start in range(0, len(data), fragment):
        piece = data[start : start + fragment]
        last = ends and start + fragment >= len(data)
        buffers += [pdv_header(context_id, kind | (CONTROL_LAST if last else 0), len(piece)), piece]


def pdv_items(body: memoryview) -> Iterator[tuple[int, int, memoryview]]:
    """(context id, message control header, fragment) of each PDV in a P-DATA-TF body."""
    offset = 0
    end = len(body)
    while offset < end:
        if offset + 6 > end:
            raise ProtocolError("truncated presentation data value item")
        (length,) = struct.unpack_from(">I", body, offset)
        if length < 2 or offset + 4 + length > end:
            raise ProtocolError(f"invalid presentation data value item length {length}")
        yield body[offset + 4], body[offset + 5], body[offset + 6 : offset + 4 + length]
        offset += 4 + length


def send(sock: socket.socket, buffers: list[bytes | memoryview]) -> None:
    """Hand every buffer to the kernel; gathered in one call where the socket allows it."""
    if isinstance(sock, ssl.SSLSocket):  # TLS sockets have no sendmsg
        sock.sendall(b"".join(buffers))
        return
    pending = [memoryview(buffer) for buffer in buffers]
    while pending:
        sent = sock.sendmsg(pending[:MAX_GATHER])
        while pending and sent >= len(pending[0]):
            sent -= len(pending[0])
            pending.pop(0)
        if pending and sent:
            pending[0] = pending[0][sent:]


def read_exactly(sock: socket.socket, size: int) -> bytes:
    parts = []
    while size:
        chunk = sock.recv(min(size, 1 << 20))
        if not chunk:
            raise PeerClosed("the peer closed the connection")
        parts.append(chunk)
        size -= len(chunk)
    return b"".join(parts)


def read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    """(PDU type, whole PDU with its header) read straight from a socket."""
    header = read_exactly(sock, 6)
    (length,) = struct.unpack(">I", header[2:6])
    return header[0], header + read_exactly(sock, length)


def read_pdu_buffered(stream: BinaryIO, limit: int) -> tuple[int, bytes]:
    """(PDU type, PDU body) from a buffered socket file; a PDU over ``limit`` is refused.

    The buffer turns the header and body reads of the many small PDUs of one instance into a
    few large recv calls.
    """
    header = stream.read(6)
    if len(header) < 6:
        raise PeerClosed("the peer closed the connection")
    kind = header[0]
    (length,) = struct.unpack(">I", header[2:6])
    if length > limit:
        raise ProtocolError(f"PDU of {length} bytes exceeds the {limit} bytes accepted")
    body = stream.read(length)
    if len(body) < length:
        raise PeerClosed("the peer closed the connection inside a PDU")
    return kind, body
