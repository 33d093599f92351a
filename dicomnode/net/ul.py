"""DICOM Upper Layer pieces shared by our association requestor (``scu``) and acceptor (``scp``).

What the standard fixes byte for byte: PDU framing and reading (PS3.8 9.3), the fixed-size
A-ASSOCIATE-RJ, A-RELEASE-RQ/RP and A-ABORT PDUs (9.3.4, 9.3.6-9.3.8), P-DATA-TF items (9.3.5)
and command sets in implicit VR little endian (PS3.7 E.2 and 9.3/9.1.5). The A-ASSOCIATE-RQ/AC
items are encoded and decoded in ``acse``; both directions use the same code.

PDUs are read through ``PDUReader``: one reusable buffer, every PDU within a deadline (a sender
that drips bytes cannot hold a connection), and P-DATA-TF read item by item, so that a dataset
fragment can be skipped without ever being held.
"""

from __future__ import annotations

import math
import socket
import ssl
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass

PDU_ASSOCIATE_RQ = 0x01
PDU_ASSOCIATE_AC = 0x02
PDU_ASSOCIATE_RJ = 0x03
PDU_DATA = 0x04
PDU_RELEASE_RQ = 0x05
PDU_RELEASE_RP = 0x06
PDU_ABORT = 0x07

PDU_HEADER = 6  # type (1), reserved (1), length (4)
PDV_OVERHEAD = 6  # item length (4), context id (1), message control header (1)
MAX_GATHER = 512  # buffers per sendmsg call; the kernel takes at most IOV_MAX (1024)
# Bodies of the PDUs that are not P-DATA-TF: an A-ASSOCIATE-RQ/AC of 128 presentation contexts
# is ~50 KB, the others are 4 bytes.
CONTROL_PDU_LIMIT = 1 << 20
READ_BUFFER_BYTES = 256 * 1024

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

# A-ABORT source (PS3.8 9.3.8)
ABORT_SOURCE_USER = 0x00
ABORT_SOURCE_PROVIDER = 0x02
# A-ABORT reason when the source is the service provider
ABORT_REASON_NOT_SPECIFIED = 0x00
ABORT_UNRECOGNIZED_PDU = 0x01
ABORT_UNEXPECTED_PDU = 0x02
ABORT_UNRECOGNIZED_PARAMETER = 0x04
ABORT_UNEXPECTED_PARAMETER = 0x05
ABORT_INVALID_PARAMETER = 0x06

_HEADER = struct.Struct(">BxI")
_PDV = struct.Struct(">IBB")


class PeerClosed(Exception):
    """The peer closed the TCP connection."""


class ProtocolError(Exception):
    """Bytes that do not follow the Upper Layer protocol; the association must be aborted.

    ``reason`` is the A-ABORT reason (PS3.8 9.3.8) the acceptor sends for it: an invalid
    parameter value unless the raiser knows better (an unrecognized or unexpected PDU, an
    unexpected parameter).
    """

    def __init__(self, message: str, reason: int = ABORT_INVALID_PARAMETER):
        super().__init__(message)
        self.reason = reason


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
    """The fields of a received command set that an acceptor or requestor acts on.

    The UIDs come decoded (a byte that is not ASCII becomes U+FFFD) and as sent, so that a
    response can echo what the peer sent, whatever it was.
    """

    field: int
    message_id: int | None
    responded_to: int | None
    sop_class_uid: str
    sop_instance_uid: str
    has_dataset: bool
    status: int | None
    error_comment: str | None
    sop_class_raw: bytes = b""
    sop_instance_raw: bytes = b""


def parse_command(data: bytes | bytearray) -> Command:
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
        values[tag_element] = bytes(data[offset : offset + length])
        offset += length

    def number(tag: int) -> int | None:
        raw = values.get(tag)
        if raw is None:
            return None
        if len(raw) != 2:
            raise ProtocolError(f"command element (0000,{tag:04X}) is not a US")
        return int(struct.unpack("<H", raw)[0])

    def raw_text(tag: int) -> bytes:
        return values.get(tag, b"").rstrip(b"\x00 ")

    field = number(TAG_COMMAND_FIELD)
    if field is None:
        raise ProtocolError("command set without CommandField")
    comment = raw_text(TAG_ERROR_COMMENT).decode("ascii", errors="replace")
    sop_class = raw_text(TAG_AFFECTED_SOP_CLASS)
    sop_instance = raw_text(TAG_AFFECTED_SOP_INSTANCE)
    return Command(
        field=field,
        message_id=number(TAG_MESSAGE_ID),
        responded_to=number(TAG_MESSAGE_ID_RESPONDED),
        sop_class_uid=sop_class.decode("ascii", errors="replace"),
        sop_instance_uid=sop_instance.decode("ascii", errors="replace"),
        has_dataset=number(TAG_DATASET_TYPE) not in (None, NO_DATASET),
        status=number(TAG_STATUS),
        error_comment=comment or None,
        sop_class_raw=sop_class,
        sop_instance_raw=sop_instance,
    )


# --- the small fixed PDUs ----------------------------------------------------------------------
def associate_reject(result: int, source: int, reason: int) -> bytes:
    """A-ASSOCIATE-RJ (PS3.8 9.3.4)."""
    return bytes((PDU_ASSOCIATE_RJ, 0, 0, 0, 0, 4, 0, result, source, reason))


def release_request() -> bytes:
    return bytes((PDU_RELEASE_RQ, 0, 0, 0, 0, 4, 0, 0, 0, 0))


def release_response() -> bytes:
    return bytes((PDU_RELEASE_RP, 0, 0, 0, 0, 4, 0, 0, 0, 0))


def abort(source: int, reason: int) -> bytes:
    """A-ABORT (PS3.8 9.3.8); the reason is significant only when the provider aborts."""
    return bytes((PDU_ABORT, 0, 0, 0, 0, 4, 0, 0, source, reason))


def fixed_fields(body: bytes | bytearray, kind: int) -> tuple[int, int, int]:
    """The last three bytes of an A-ASSOCIATE-RJ body (result, source, reason) or of an
    A-ABORT body (reserved, source, reason)."""
    if len(body) != 4:
        raise ProtocolError(f"PDU type 0x{kind:02X} with a body of {len(body)} bytes, not 4")
    return body[1], body[2], body[3]


# --- P-DATA-TF ---------------------------------------------------------------------------------
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
    """(context id, message control header, fragment) of each PDV in a whole P-DATA-TF body."""
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


def send(sock: socket.socket, buffers: list[bytes | memoryview], timeout: float | None) -> None:
    """Hand every buffer to the kernel; gathered in one call where the socket allows it. Each
    call may wait up to ``timeout`` for room in the send buffer."""
    sock.settimeout(timeout)
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


# --- reading -----------------------------------------------------------------------------------
class PDUReader:
    """PDUs read from a socket through one reusable buffer, each before a deadline.

    ``begin(seconds)`` starts the deadline of the next PDU: waiting for its first byte and
    reading its last count against it, so a peer that sends a byte a second gets nowhere.
    ``take`` returns a fresh object for what is kept (the only copy out of the buffer; large
    pieces are received straight into it), ``skip`` consumes bytes without keeping them.
    """

    __slots__ = ("_sock", "_buffer", "_view", "_start", "_end", "deadline")

    def __init__(self, sock: socket.socket, buffer_bytes: int = READ_BUFFER_BYTES):
        self._sock = sock
        self._buffer = bytearray(buffer_bytes)
        self._view = memoryview(self._buffer)
        self._start = 0
        self._end = 0
        self.deadline = math.inf

    def begin(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def _receive(self, view: memoryview) -> int:
        if self.deadline == math.inf:
            self._sock.settimeout(None)
        else:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("timed out: the PDU did not arrive within its deadline")
            self._sock.settimeout(remaining)
        received = self._sock.recv_into(view)
        if not received:
            raise PeerClosed("the peer closed the connection")
        return received

    def _fill(self, need: int) -> None:
        """At least ``need`` (at most the buffer's size) bytes buffered."""
        start, end = self._start, self._end
        if start == end:
            start = end = 0
        elif len(self._buffer) - start < need:
            self._view[: end - start] = self._view[start:end]
            start, end = 0, end - start
        try:
            while end - start < need:
                end += self._receive(self._view[end:])
        finally:
            self._start, self._end = start, end

    def header(self) -> tuple[int, int]:
        """(type, length) of the next PDU."""
        if self._end - self._start < PDU_HEADER:
            self._fill(PDU_HEADER)
        kind, length = _HEADER.unpack_from(self._buffer, self._start)
        self._start += PDU_HEADER
        return kind, length

    def pdv(self) -> tuple[int, int, int]:
        """(item length, context id, message control header) of the next PDV item."""
        if self._end - self._start < PDV_OVERHEAD:
            self._fill(PDV_OVERHEAD)
        values = _PDV.unpack_from(self._buffer, self._start)
        self._start += PDV_OVERHEAD
        return values

    def take(self, size: int) -> bytes | bytearray:
        start = self._start
        available = self._end - start
        if size <= available:
            self._start = start + size
            return self._buffer[start : start + size]
        if size <= len(self._buffer) // 2:
            self._fill(size)
            start = self._start
            self._start = start + size
            return self._buffer[start : start + size]
        piece = bytearray(size)
        piece[:available] = self._view[start : self._end]
        self._start = self._end = 0
        view = memoryview(piece)
        filled = available
        while filled < size:
            filled += self._receive(view[filled:])
        return piece

    def skip(self, size: int) -> None:
        available = self._end - self._start
        if size <= available:
            self._start += size
            return
        size -= available
        self._start = self._end = 0
        view = self._view
        while size:
            size -= self._receive(view[: min(size, len(view))])

    def pdu(self, limit: int) -> tuple[int, bytes | bytearray]:
        """(type, body) of a whole PDU; ProtocolError for a body over ``limit`` (nothing of it
        is read then)."""
        kind, length = self.header()
        if length > limit:
            raise ProtocolError(
                f"PDU type 0x{kind:02X} of {length} bytes exceeds the {limit} bytes accepted"
            )
        return kind, self.take(length)


KNOWN_PDU_TYPES = frozenset(
    (
        PDU_ASSOCIATE_RQ,
        PDU_ASSOCIATE_AC,
        PDU_ASSOCIATE_RJ,
        PDU_DATA,
        PDU_RELEASE_RQ,
        PDU_RELEASE_RP,
        PDU_ABORT,
    )
)


def unexpected(kind: int, where: str) -> ProtocolError:
    """The error for a PDU of type ``kind`` arriving ``where`` it does not belong: an
    unrecognized PDU (reason 0x01) when the type is none of PS3.8's seven, else an unexpected
    one (0x02)."""
    if kind in KNOWN_PDU_TYPES:
        return ProtocolError(f"unexpected PDU type 0x{kind:02X} {where}", ABORT_UNEXPECTED_PDU)
    return ProtocolError(f"unrecognized PDU type 0x{kind:02X} {where}", ABORT_UNRECOGNIZED_PDU)
