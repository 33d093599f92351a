"""A blocking requestor association: one socket, one thread, one request in flight.

It carries the sender's C-STOREs (``dicomnode.deliver.sender``) and the C-ECHO of
``dicomnode echo`` (``verify``), so both present our identity (``dicomnode.identity``) and
speak TLS the same way.

Why not pynetdicom's ``Association``: it runs a DUL thread and a reactor thread that hand every
PDU over through queues and poll with sleeps, and builds each request through validated
primitives. Tuned as far as it goes (TCP_NODELAY, a paused reactor, a 0.1 ms DUL loop) it sent
0.41x storescu's instances/s into the same Orthanc; this loop sends 0.79-0.85x over one
association and 1.14-1.20x over four (``bench/bench_send.py``).

Every PDU is ours: the A-ASSOCIATE-RQ is written and the A-ASSOCIATE-AC read by ``acse`` (the
same codec the listener uses the other way round), the rest by ``ul``: the C-STORE-RQ command
set (PS3.7 9.3.1.1, implicit VR little endian), the few fields read from the response, and
P-DATA-TF framing (PS3.8 9.3.5), so that the dataset goes from the spooled file to the socket
without being parsed or copied into PDU objects. What the peer sends back is read with a cap:
a P-DATA-TF PDU no longer than the maximum we advertised, any other PDU at most
``ul.CONTROL_PDU_LIMIT``, each within the timeout.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pynetdicom.dsutils import split_dataset

from dicomnode.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from dicomnode.net import acse, ul

OUR_MAXIMUM_PDU = 65536  # responses are a few hundred bytes; this only bounds what we accept
UNLIMITED_PDU_FRAGMENT = 1 << 20  # when the peer sets no limit, still send bounded PDUs
WHOLE_READ_BYTES = 8 * 2**20
READ_BUFFER_BYTES = 2 * OUR_MAXIMUM_PDU + ul.PDU_HEADER
READ_CHUNK_PDUS = 16  # PDUs read from disk and handed to the kernel at a time
PRIORITY_MEDIUM = 0x0000
VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"


class AssociationError(Exception):
    """No association, or it ended (abort, closed socket, timeout, protocol error)."""


@dataclass(frozen=True)
class StoreResponse:
    status: int
    error_comment: str | None


@dataclass(frozen=True)
class DatasetSource:
    """The dataset of one request: a spooled file from ``offset``, or encoded bytes."""

    path: Path | None = None
    offset: int = 0
    data: bytes | memoryview | None = None

    @classmethod
    def from_file(cls, path: Path) -> DatasetSource:
        """Files up to ``WHOLE_READ_BYTES`` are read in one go (one open, one read per
        instance); larger ones are streamed from disk while they are sent."""
        with path.open("rb") as handle:
            if os.fstat(handle.fileno()).st_size <= WHOLE_READ_BYTES:
                whole = handle.read()
                return cls(data=memoryview(whole)[_dataset_offset(whole[:144], path) :])
            head = handle.read(144)
        return cls(path=path, offset=_dataset_offset(head, path))


def _dataset_offset(head: bytes, path: Path) -> int:
    """Where the dataset starts in a Part 10 file, from its meta group length when present."""
    # preamble (128), "DICM", then (0002,0000) UL, explicit VR little endian: tag, "UL", 4, value
    if len(head) == 144 and head[128:132] == b"DICM" and head[132:138] == b"\x02\x00\x00\x00UL":
        return 144 + struct.unpack("<I", head[140:144])[0]
    return split_dataset(path)[1]


def store_command(sop_class_uid: str, sop_instance_uid: str, message_id: int) -> bytes:
    """The C-STORE-RQ command set, implicit VR little endian, group length first."""
    return ul.command_set(
        ul.element(ul.TAG_AFFECTED_SOP_CLASS, sop_class_uid.encode("ascii")),
        ul.element(ul.TAG_COMMAND_FIELD, ul.us(ul.C_STORE_RQ)),
        ul.element(ul.TAG_MESSAGE_ID, ul.us(message_id)),
        ul.element(ul.TAG_PRIORITY, ul.us(PRIORITY_MEDIUM)),
        ul.element(ul.TAG_DATASET_TYPE, ul.us(ul.DATASET_PRESENT)),
        ul.element(ul.TAG_AFFECTED_SOP_INSTANCE, sop_instance_uid.encode("ascii")),
    )


def echo_command(message_id: int) -> bytes:
    """The C-ECHO-RQ command set (PS3.7 9.3.5.1), implicit VR little endian."""
    return ul.command_set(
        ul.element(ul.TAG_AFFECTED_SOP_CLASS, VERIFICATION.encode("ascii")),
        ul.element(ul.TAG_COMMAND_FIELD, ul.us(ul.C_ECHO_RQ)),
        ul.element(ul.TAG_MESSAGE_ID, ul.us(message_id)),
        ul.element(ul.TAG_DATASET_TYPE, ul.us(ul.NO_DATASET)),
    )


class StoreAssociation:
    """An established association on which C-STORE (or C-ECHO) requests are sent one at a
    time."""

    def __init__(
        self,
        sock: socket.socket,
        reader: ul.PDUReader,
        maximum_pdu: int,
        accepted: dict[int, tuple[str, str]],
        timeout: float,
    ):
        self._sock = sock
        self._reader = reader
        limit = maximum_pdu or UNLIMITED_PDU_FRAGMENT
        self._fragment = max(limit - ul.PDV_OVERHEAD, 1)
        self._timeout = timeout
        self.accepted = accepted  # context id -> (abstract syntax, transfer syntax)
        self.is_established = True

    # --- establishment -----------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        host: str,
        port: int,
        calling_ae: str,
        called_ae: str,
        contexts: Sequence[Any],
        connect_timeout: float,
        dimse_timeout: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> StoreAssociation:
        """Contexts are proposed in order, with IDs 1, 3, 5, ...: ``acse.ProposedContext``, or
        objects with ``abstract_syntax`` and ``transfer_syntax`` (pynetdicom's contexts)."""
        try:
            sock = socket.create_connection((host, port), timeout=connect_timeout)
        except OSError as exc:
            raise AssociationError(f"cannot connect to {host}:{port}: {exc}") from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if ssl_context is not None:
                sock = ssl_context.wrap_socket(sock)
            proposed = _proposals(contexts)
            request = acse.association_request(
                calling_ae,
                called_ae,
                proposed,
                OUR_MAXIMUM_PDU,
                IMPLEMENTATION_CLASS_UID,
                IMPLEMENTATION_VERSION_NAME,
            )
            ul.send(sock, [request], connect_timeout)
            reader = ul.PDUReader(sock, READ_BUFFER_BYTES)
            reader.begin(connect_timeout)
            kind, body = reader.pdu(ul.CONTROL_PDU_LIMIT)
            if kind == ul.PDU_ASSOCIATE_RJ:
                result, source, reason = ul.fixed_fields(body, kind)
                raise AssociationError(
                    f"association rejected by {called_ae}: "
                    + acse.rejection_text(result, source, reason)
                )
            if kind == ul.PDU_ABORT:
                raise AssociationError(f"association aborted by {called_ae}")
            if kind != ul.PDU_ASSOCIATE_AC:
                raise ul.ProtocolError(f"PDU type 0x{kind:02X} where an A-ASSOCIATE-AC belongs")
            answer = acse.read_acceptance(body)
            accepted = _accepted_contexts(proposed, answer)
            return cls(sock, reader, answer.maximum_length, accepted, dimse_timeout)
        except AssociationError:
            sock.close()
            raise
        except ul.ProtocolError as exc:
            _abort_quietly(sock)
            raise AssociationError(f"association failed: {exc}") from None
        except ul.PeerClosed:
            sock.close()
            raise AssociationError("the destination closed the connection") from None
        except (OSError, ValueError) as exc:
            sock.close()
            raise AssociationError(f"association failed: {type(exc).__name__}: {exc}") from None

    # --- C-STORE ------------------------------------------------------------------------------
    def store(
        self,
        context_id: int,
        sop_class_uid: str,
        sop_instance_uid: str,
        message_id: int,
        dataset: DatasetSource,
    ) -> StoreResponse:
        """Send one C-STORE-RQ and wait for its response; AssociationError if the link fails."""

        def exchange() -> StoreResponse:
            command = store_command(sop_class_uid, sop_instance_uid, message_id)
            self._send_request(context_id, command, dataset)
            return self._read_response(ul.C_STORE_RSP, message_id)

        return self._exchange(exchange)

    def echo(self, context_id: int, message_id: int) -> StoreResponse:
        """Send one C-ECHO-RQ and wait for its response; AssociationError if the link fails."""

        def exchange() -> StoreResponse:
            self._send_request(context_id, echo_command(message_id), None)
            return self._read_response(ul.C_ECHO_RSP, message_id)

        return self._exchange(exchange)

    def _exchange(self, work: Callable[[], StoreResponse]) -> StoreResponse:
        """One request and its response; a failure of the link ends the association."""
        try:
            return work()
        except AssociationError:
            self._close()
            raise
        except ul.PeerClosed:
            self._close()
            raise AssociationError("the destination closed the connection") from None
        except (OSError, ValueError, ul.ProtocolError) as exc:  # timeouts are OSErrors too
            self.abort()
            raise AssociationError(f"{type(exc).__name__}: {exc}") from None

    def _send_request(self, context_id: int, command: bytes, dataset: DatasetSource | None) -> None:
        buffers: list[bytes | memoryview] = []
        ul.frame(buffers, context_id, command, self._fragment, command=True, ends=True)
        if dataset is None:
            ul.send(self._sock, buffers, self._timeout)
            return
        if dataset.data is not None:
            ul.frame(buffers, context_id, dataset.data, self._fragment, command=False, ends=True)
            ul.send(self._sock, buffers, self._timeout)
            return
        assert dataset.path is not None
        with dataset.path.open("rb") as handle:
            remaining = os.fstat(handle.fileno()).st_size - dataset.offset
            handle.seek(dataset.offset)
            while remaining > 0:
                chunk = handle.read(min(remaining, self._fragment * READ_CHUNK_PDUS))
                if not chunk:
                    raise ValueError(f"{dataset.path.name} shrank while it was being sent")
                remaining -= len(chunk)
                ul.frame(
                    buffers, context_id, chunk, self._fragment, command=False, ends=remaining == 0
                )
                ul.send(self._sock, buffers, self._timeout)
                buffers = []

    def _read_pdu(self) -> tuple[int, bytes | bytearray]:
        """The next PDU within the timeout; a P-DATA-TF longer than we advertised, or any
        other PDU over ``ul.CONTROL_PDU_LIMIT``, is a protocol error and never read whole."""
        self._reader.begin(self._timeout)
        kind, length = self._reader.header()
        limit = OUR_MAXIMUM_PDU if kind == ul.PDU_DATA else ul.CONTROL_PDU_LIMIT
        if length > limit:
            raise ul.ProtocolError(
                f"PDU type 0x{kind:02X} of {length} bytes exceeds the {limit} bytes accepted"
            )
        return kind, self._reader.take(length)

    def _read_response(self, field: int, message_id: int) -> StoreResponse:
        parts: list[bytes] = []
        size = 0
        while True:
            kind, body = self._read_pdu()
            if kind == ul.PDU_ABORT:
                raise AssociationError("the destination aborted the association")
            if kind == ul.PDU_RELEASE_RQ:
                ul.send(self._sock, [ul.release_response()], self._timeout)
                raise AssociationError("the destination released the association mid-transfer")
            if kind != ul.PDU_DATA:
                raise ul.ProtocolError(f"unexpected PDU type 0x{kind:02X} awaiting a response")
            for _, control, fragment in ul.pdv_items(memoryview(body)):
                if not control & ul.CONTROL_COMMAND:
                    raise ul.ProtocolError("a dataset where a response command was expected")
                size += len(fragment)
                if size > OUR_MAXIMUM_PDU:
                    raise ul.ProtocolError(f"a response command set over {OUR_MAXIMUM_PDU} bytes")
                parts.append(bytes(fragment))
                if control & ul.CONTROL_LAST:
                    return _response(ul.parse_command(b"".join(parts)), field, message_id)

    # --- ending -------------------------------------------------------------------------------
    def release(self) -> None:
        """A-RELEASE; a peer that does not answer in time is left with a closed socket."""
        if not self.is_established:
            return
        try:
            ul.send(self._sock, [ul.release_request()], self._timeout)
            while True:
                kind, _ = self._read_pdu()
                if kind in (ul.PDU_RELEASE_RP, ul.PDU_ABORT):
                    break
        except (OSError, ValueError, ul.ProtocolError, ul.PeerClosed):
            pass
        self._close()

    def abort(self) -> None:
        if not self.is_established:
            return
        _abort_quietly(self._sock)
        self.is_established = False

    def _close(self) -> None:
        self.is_established = False
        try:
            self._sock.close()
        except OSError:
            pass


def _abort_quietly(sock: socket.socket) -> None:
    """A-ABORT from the service user, then close; the peer may be gone already."""
    try:
        ul.send(sock, [ul.abort(ul.ABORT_SOURCE_USER, ul.ABORT_REASON_NOT_SPECIFIED)], 1.0)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def _proposals(contexts: Sequence[Any]) -> list[acse.ProposedContext]:
    proposed = []
    for index, context in enumerate(contexts):
        if isinstance(context, acse.ProposedContext):
            syntaxes = context.transfer_syntaxes
        else:
            syntaxes = tuple(str(s) for s in context.transfer_syntax)
        proposed.append(
            acse.ProposedContext(2 * index + 1, str(context.abstract_syntax), tuple(syntaxes))
        )
    return proposed


def _accepted_contexts(
    proposed: Sequence[acse.ProposedContext], answer: acse.AssociateAccept
) -> dict[int, tuple[str, str]]:
    """Context ID -> (abstract syntax, transfer syntax) of each context the peer accepted in
    one of the syntaxes we proposed for it."""
    by_id = {context.context_id: context for context in proposed}
    accepted: dict[int, tuple[str, str]] = {}
    for result in answer.results:
        request = by_id.get(result.context_id)
        if (
            result.result == acse.RESULT_ACCEPTANCE
            and request is not None
            and result.transfer_syntax in request.transfer_syntaxes
        ):
            accepted[result.context_id] = (request.abstract_syntax, result.transfer_syntax)
    return accepted


def _response(command: ul.Command, field: int, message_id: int) -> StoreResponse:
    if command.field != field:
        raise ValueError(
            f"expected response command 0x{field:04X}, got command 0x{command.field:04X}"
        )
    if command.responded_to != message_id:
        raise ValueError("response to another message id")
    if command.status is None:
        raise ValueError(f"response 0x{field:04X} without a Status")
    return StoreResponse(command.status, command.error_comment)


def verify(
    host: str,
    port: int,
    calling_ae: str,
    called_ae: str,
    timeout: float,
    ssl_context: ssl.SSLContext | None = None,
) -> StoreResponse:
    """Associate (proposing Verification in implicit and explicit VR little endian), send one
    C-ECHO, release; the response. AssociationError when there is no association, the peer
    accepts no Verification context, or the link fails."""
    context = acse.ProposedContext(
        1, VERIFICATION, (IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN)
    )
    association = StoreAssociation.open(
        host, port, calling_ae, called_ae, [context], timeout, timeout, ssl_context
    )
    try:
        if not association.accepted:
            raise AssociationError(f"{called_ae} accepted no Verification presentation context")
        return association.echo(next(iter(association.accepted)), 1)
    finally:
        association.release()
