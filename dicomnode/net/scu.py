"""A blocking C-STORE association: one socket, one thread, one request in flight.

Why not pynetdicom's ``Association``: it runs a DUL thread and a reactor thread that hand every
PDU over through queues and poll with sleeps, and builds each request through validated
primitives. Tuned as far as it goes (TCP_NODELAY, a paused reactor, a 0.1 ms DUL loop) it sent
0.41x storescu's instances/s into the same Orthanc; this loop sends 0.79-0.85x over one
association and 1.14-1.20x over four (``bench/bench_send.py``).

pynetdicom still does everything that has rules to get wrong: the A-ASSOCIATE-RQ/AC/RJ,
A-RELEASE and A-ABORT PDUs and presentation contexts. Written by hand (``dicomnode.net.ul``) are
only the encodings on the hot path, all fixed by the standard: the C-STORE-RQ command set
(PS3.7 9.3.1.1, implicit VR little endian), the few fields read from the response, and
P-DATA-TF framing (PS3.8 9.3.5), so that the dataset goes from the spooled file to the socket
without being parsed or copied into PDU objects.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom.uid import UID
from pynetdicom._globals import APPLICATION_CONTEXT_NAME
from pynetdicom.dsutils import split_dataset
from pynetdicom.pdu import (
    A_ABORT_RQ,
    A_ASSOCIATE_AC,
    A_ASSOCIATE_RJ,
    A_ASSOCIATE_RQ,
    A_RELEASE_RP,
    A_RELEASE_RQ,
)
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    MaximumLengthNotification,
)
from pynetdicom.presentation import PresentationContext

from dicomnode.net import ul

OUR_MAXIMUM_PDU = 65536  # responses are a few hundred bytes; this only bounds what we accept
UNLIMITED_PDU_FRAGMENT = 1 << 20  # when the peer sets no limit, still send bounded PDUs
WHOLE_READ_BYTES = 8 * 2**20
READ_CHUNK_PDUS = 16  # PDUs read from disk and handed to the kernel at a time
PRIORITY_MEDIUM = 0x0000


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


class StoreAssociation:
    """An established association on which C-STORE requests are sent one at a time."""

    def __init__(self, sock: socket.socket, maximum_pdu: int, accepted: dict[int, tuple[str, str]]):
        self._sock = sock
        limit = maximum_pdu or UNLIMITED_PDU_FRAGMENT
        self._fragment = max(limit - ul.PDV_OVERHEAD, 1)
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
        contexts: Sequence[PresentationContext],
        connect_timeout: float,
        dimse_timeout: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> StoreAssociation:
        try:
            sock = socket.create_connection((host, port), timeout=connect_timeout)
        except OSError as exc:
            raise AssociationError(f"cannot connect to {host}:{port}: {exc}") from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if ssl_context is not None:
                sock = ssl_context.wrap_socket(sock)
            ul.send(sock, [_associate_request(calling_ae, called_ae, contexts).encode()])
            kind, raw = _read_pdu(sock)
            if kind == ul.PDU_ASSOCIATE_RJ:
                rejection = A_ASSOCIATE_RJ()
                rejection.decode(raw)
                raise AssociationError(
                    f"association rejected by {called_ae}: {_rejection_text(rejection)}"
                )
            if kind != ul.PDU_ASSOCIATE_AC:
                raise AssociationError(f"association not accepted (PDU type 0x{kind:02X})")
            answer = A_ASSOCIATE_AC()
            answer.decode(raw)
            primitive = answer.to_primitive()
            accepted = _accepted_contexts(contexts, primitive)
            maximum = next(
                (
                    int(item.maximum_length_received or 0)
                    for item in primitive.user_information
                    if isinstance(item, MaximumLengthNotification)
                ),
                0,
            )
            sock.settimeout(dimse_timeout)
            return cls(sock, maximum, accepted)
        except AssociationError:
            sock.close()
            raise
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
        command = store_command(sop_class_uid, sop_instance_uid, message_id)
        try:
            self._send_request(context_id, command, dataset)
            return self._read_response(message_id)
        except AssociationError:
            self._close()
            raise
        except (OSError, ValueError) as exc:  # timeouts are OSErrors too
            self.abort()
            raise AssociationError(f"{type(exc).__name__}: {exc}") from None

    def _send_request(self, context_id: int, command: bytes, dataset: DatasetSource) -> None:
        buffers: list[bytes | memoryview] = []
        ul.frame(buffers, context_id, command, self._fragment, command=True, ends=True)
        if dataset.data is not None:
            ul.frame(buffers, context_id, dataset.data, self._fragment, command=False, ends=True)
            ul.send(self._sock, buffers)
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
                ul.send(self._sock, buffers)
                buffers = []

    def _read_response(self, message_id: int) -> StoreResponse:
        parts: list[bytes] = []
        while True:
            kind, raw = _read_pdu(self._sock)
            if kind == ul.PDU_ABORT:
                raise AssociationError("the destination aborted the association")
            if kind == ul.PDU_RELEASE_RQ:
                ul.send(self._sock, [A_RELEASE_RP().encode()])
                raise AssociationError("the destination released the association mid-transfer")
            if kind != ul.PDU_DATA:
                raise ValueError(f"unexpected PDU type 0x{kind:02X} while awaiting a response")
            for _, control, fragment in ul.pdv_items(memoryview(raw)[6:]):
                if not control & ul.CONTROL_COMMAND:
                    raise ValueError("a dataset where a C-STORE response was expected")
                parts.append(bytes(fragment))
                if control & ul.CONTROL_LAST:
                    return _store_response(ul.parse_command(b"".join(parts)), message_id)

    # --- ending -------------------------------------------------------------------------------
    def release(self) -> None:
        """A-RELEASE; a peer that does not answer in time is left with a closed socket."""
        if not self.is_established:
            return
        try:
            ul.send(self._sock, [A_RELEASE_RQ().encode()])
            while True:
                kind, _ = _read_pdu(self._sock)
                if kind in (ul.PDU_RELEASE_RP, ul.PDU_ABORT):
                    break
        except (OSError, ValueError, AssociationError):
            pass
        self._close()

    def abort(self) -> None:
        if not self.is_established:
            return
        try:
            abort = A_ABORT_RQ()
            abort.source = 0x00  # DICOM UL service-user
            abort.reason_diagnostic = 0x00
            ul.send(self._sock, [abort.encode()])
        except OSError:
            pass
        self._close()

    def _close(self) -> None:
        self.is_established = False
        try:
            self._sock.close()
        except OSError:
            pass


def _associate_request(
    calling_ae: str, called_ae: str, contexts: Sequence[PresentationContext]
) -> A_ASSOCIATE_RQ:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = UID(APPLICATION_CONTEXT_NAME)
    primitive.calling_ae_title = calling_ae
    primitive.called_ae_title = called_ae
    for index, context in enumerate(contexts):
        context.context_id = 2 * index + 1  # odd numbers, PS3.8 9.3.2.2
    primitive.presentation_context_definition_list = list(contexts)
    primitive.user_information = ul.user_information(OUR_MAXIMUM_PDU)
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return pdu


def _accepted_contexts(
    proposed: Sequence[PresentationContext], primitive: A_ASSOCIATE
) -> dict[int, tuple[str, str]]:
    by_id = {context.context_id: context for context in proposed}
    accepted: dict[int, tuple[str, str]] = {}
    for result in primitive.presentation_context_definition_results_list:
        request = by_id.get(result.context_id)
        if result.result == 0 and request is not None and result.transfer_syntax:
            accepted[result.context_id] = (
                str(request.abstract_syntax),
                str(result.transfer_syntax[0]),
            )
    return accepted


def _store_response(command: ul.Command, message_id: int) -> StoreResponse:
    if command.field != ul.C_STORE_RSP:
        raise ValueError(f"expected a C-STORE response, got command 0x{command.field:04X}")
    if command.responded_to != message_id:
        raise ValueError("response to another message id")
    if command.status is None:
        raise ValueError("C-STORE response without a Status")
    return StoreResponse(command.status, command.error_comment)


def _rejection_text(rejection: A_ASSOCIATE_RJ) -> str:
    try:
        return f"{rejection.result_str}, {rejection.source_str}, {rejection.reason_str}"
    except (KeyError, AttributeError):
        return (
            f"result {rejection.result}, source {rejection.source}, "
            f"reason {rejection.reason_diagnostic}"
        )


def _read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    try:
        return ul.read_pdu(sock)
    except ul.PeerClosed:
        raise AssociationError("the destination closed the connection") from None
