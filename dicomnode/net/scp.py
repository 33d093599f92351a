"""The DICOM listener: C-ECHO and C-STORE of every storage class, over TCP or TLS.

Why not pynetdicom's ``AE.start_server``: every association there runs a DUL thread and a
reactor thread that pass each PDU through queues and poll with sleeps, and every request and
response goes through validated primitives and pydicom datasets. Measured, that machinery cost
~2.5 ms per instance on top of our ~1.5 ms of durable intake, and held the node at 0.44x
Orthanc's instances/s (``bench/bench_intake.py``). Here one thread serves one association with
blocking reads: a C-STORE's fragments are gathered as they arrive, handed to the application's
``Handler`` (``dicomnode.net.handler``) and answered with a hand-encoded response. Every PDU,
negotiation included, is read and written by our own code (``ul``, ``acse``).

Bounds, so that no peer can take more than its share:
- a connection not yet associated holds a *pending* slot (``max_pending_connections`` across
  the node; beyond it a connection is closed at once) and must deliver its A-ASSOCIATE-RQ
  within ``association_request_timeout_seconds``; only an accepted association takes one of
  the ``max_associations`` slots, and gives it back as soon as it ends;
- a connection from a source address the handler refuses (``address_allowed``, asked at TCP
  accept) holds a *refused* slot instead (``max_refused_connections`` across the node, a small
  budget; beyond it it is closed at once): it still gets its A-ASSOCIATE-RJ, and can never
  take a pending slot from an allowed scanner;
- threads: one per pending or refused connection or association, so at most the sum of the
  three limits;
- every later PDU must arrive whole within ``network_timeout_seconds`` of the wait for it, and
  a P-DATA-TF PDU must be no longer than the ``max_pdu_size`` we advertised (when not 0);
- a C-STORE dataset over ``max_dataset_bytes`` is refused with 0xA700 (out of resources): its
  fragments are kept only while the running total is under the limit, the rest is read and
  dropped, then the refusal is sent.
"""

from __future__ import annotations

import itertools
import logging
import os
import select
import selectors
import socket
import ssl
import struct
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification

from dicomnode.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from dicomnode.net import acse, ul
from dicomnode.net.handler import (
    CANNOT_UNDERSTAND,
    OUT_OF_RESOURCES,
    PROCESSING_FAILURE,
    SOP_CLASS_NOT_SUPPORTED,
    SUCCESS,
    UNRECOGNIZED_OPERATION,
    Arrival,
    Association,
    Handler,
    Rejection,
    StoreStatus,
)
from dicomnode.net.limits import (
    ASSOCIATIONS,
    MAX_REFUSED_CONNECTIONS,
    PENDING,
    REFUSED,
    Slots,
)

log = logging.getLogger("dicomnode.net.scp")

ACCEPTED_TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
]

COMMAND_LIMIT = 64 * 1024  # a command set is a few hundred bytes
CLOSE_WAIT_SECONDS = 5.0  # how long the peer may take to close after our RJ, RP or abort
STOP_JOIN_SECONDS = 10.0
REFUSAL_LOG_SECONDS = 10.0  # connections refused for the pending limit: one line per period
ERROR_COMMENT_LIMIT = 64  # LO
_PREAMBLE = b"\x00" * 128 + b"DICM"


def supported_contexts() -> dict[str, list[str]]:
    """Verification, and every storage SOP class with the transfer syntaxes we can decode, in
    our order of preference."""
    contexts: dict[str, list[str]] = {
        Verification: [ImplicitVRLittleEndian, ExplicitVRLittleEndian]
    }
    for context in AllStoragePresentationContexts:
        contexts[str(context.abstract_syntax)] = [str(s) for s in ACCEPTED_TRANSFER_SYNTAXES]
    return contexts


@dataclass(frozen=True)
class ListenerSettings:
    """What the listener needs to know, as plain values (the node builds it from its config)."""

    ae_title: str
    bind_address: str = "0.0.0.0"
    port: int = 11112
    max_pdu_size: int = 0  # advertised in the A-ASSOCIATE-AC and enforced on P-DATA-TF; 0: none
    network_timeout_seconds: float = 60.0  # per whole PDU, the wait for it included
    association_request_timeout_seconds: float = 10.0  # TCP accept to whole A-ASSOCIATE-RQ
    max_associations: int = 16  # across every process sharing the Slots
    max_pending_connections: int = 32  # ditto
    max_refused_connections: int = MAX_REFUSED_CONNECTIONS  # ditto, from refused addresses
    max_dataset_bytes: int = 512 * 2**20
    ssl_context: ssl.SSLContext | None = None
    contexts: Mapping[str, Sequence[str]] | None = None  # None: supported_contexts()


def listening_socket(bind_address: str, port: int) -> socket.socket:
    """The bound, listening TCP socket that receiver processes share."""
    family = socket.AF_INET6 if ":" in bind_address else socket.AF_INET
    return socket.create_server((bind_address, port), family=family, backlog=128)


class StoreSCP:
    """The listener of one process; several may accept on one shared socket, counting their
    pending connections and associations in one shared ``Slots``."""

    def __init__(self, settings: ListenerSettings, handler: Handler, slots: Slots | None = None):
        self.settings = settings
        self.handler = handler
        self._own_slots = slots is None
        self.slots = slots or self._new_slots()
        self.contexts = settings.contexts or supported_contexts()
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._wake: tuple[int, int] | None = None
        self._active: dict[int, _Association] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        # connections closed at accept, per slot kind: (closed since the last line, logged at)
        self._closed_at_accept = {
            PENDING: [0, -REFUSAL_LOG_SECONDS],
            REFUSED: [0, -REFUSAL_LOG_SECONDS],
        }
        self._address_allowed = getattr(handler, "address_allowed", None)
        self.stopping = threading.Event()

    def _new_slots(self) -> Slots:
        """A table of our own, when no receiver pool shares one with us."""
        settings = self.settings
        return Slots.create(
            1,
            settings.max_pending_connections,
            settings.max_associations,
            max_refused=settings.max_refused_connections,
        )

    def start(self, shared: socket.socket | None = None) -> None:
        settings = self.settings
        self.stopping.clear()
        if self._own_slots and self.slots.closed:
            self.slots = self._new_slots()
        self._socket = shared or listening_socket(settings.bind_address, settings.port)
        # Several processes may accept on this socket: non-blocking, so that the ones that lose
        # the race for a connection go back to waiting.
        self._socket.setblocking(False)
        self._wake = os.pipe()
        self._thread = threading.Thread(target=self._accept_loop, name="scp-listener")
        self._thread.start()
        log.info(
            "listening",
            extra={
                "ae_title": settings.ae_title,
                "port": self.port,
                "tls": settings.ssl_context is not None,
            },
        )

    def stop(self) -> None:
        """Stop accepting, let each association finish the instance it is storing, then abort.

        Shutting the read side makes each association's next read see the end of the stream,
        while a response being written still reaches the sender: an instance is either
        acknowledged and stored, or unacknowledged and sent again by the scanner.
        """
        if self._socket is None:
            return
        self.stopping.set()
        assert self._wake is not None
        os.write(self._wake[1], b"x")
        if self._thread is not None:
            self._thread.join()
        self._socket.close()
        for fd in self._wake:
            os.close(fd)
        with self._lock:
            associations = list(self._active.values())
        for association in associations:
            association.interrupt()
        deadline = time.monotonic() + STOP_JOIN_SECONDS
        for association in associations:
            association.finished.wait(max(deadline - time.monotonic(), 0))
        self._socket = None
        if self._own_slots and all(a.finished.is_set() for a in associations):
            self.slots.close()

    @property
    def port(self) -> int:
        assert self._socket is not None
        return int(self._socket.getsockname()[1])

    def connections(self) -> int:
        """Connections of this process now served (pending, refused or associated)."""
        with self._lock:
            return len(self._active)

    # --- accepting ------------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        assert self._socket is not None and self._wake is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self._socket, selectors.EVENT_READ)
            selector.register(self._wake[0], selectors.EVENT_READ)
            while not self.stopping.is_set():
                events = selector.select()
                if any(key.fileobj == self._wake[0] for key, _ in events):
                    return
                self._accept_ready()

    def _accept_ready(self) -> None:
        assert self._socket is not None
        while not self.stopping.is_set():
            try:
                raw, address = self._socket.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:  # out of file descriptors: let the backlog wait a moment
                log.error("cannot accept connections: %s", exc)
                time.sleep(0.1)
                return
            peer = str(address[0])
            kind = PENDING if self._allowed(peer) else REFUSED
            if not self.slots.take(kind):
                self._close_at_accept(raw, peer, kind)
                continue
            number = next(self._ids)
            association = _Association(self, raw, peer, number, kind)
            with self._lock:
                self._active[number] = association
            threading.Thread(
                target=self._serve,
                args=(association, number),
                name=f"association-{number}",
                daemon=True,
            ).start()

    def _allowed(self, peer: str) -> bool:
        """Whether the handler lets this source address associate (asked before any read)."""
        if self._address_allowed is None:
            return True
        try:
            return bool(self._address_allowed(peer))
        except Exception:  # noqa: BLE001 - the accept loop must go on; the RQ check decides
            log.exception("address check failed", extra={"peer": peer})
            return True

    def _close_at_accept(self, raw: socket.socket, peer: str, kind: int) -> None:
        """Close a connection beyond its budget: nothing read or sent; one log line per
        period with the count (the peer's address and the limit, no patient data)."""
        raw.close()
        counter = self._closed_at_accept[kind]
        counter[0] += 1
        now = time.monotonic()
        if now - counter[1] < REFUSAL_LOG_SECONDS:
            return
        if kind == REFUSED:
            message = "connection closed: too many connections from refused addresses"
            limit = {"max_refused_connections": self.settings.max_refused_connections}
        else:
            message = "connection closed: too many connections awaiting association"
            limit = {"max_pending_connections": self.settings.max_pending_connections}
        log.warning(message, extra={"peer": peer, "refused": counter[0], **limit})
        counter[0], counter[1] = 0, now

    def _serve(self, association: _Association, number: int) -> None:
        try:
            association.run()
        finally:
            with self._lock:
                self._active.pop(number, None)
            association.finished.set()


class _Association:
    """One accepted connection, from TCP accept to release, abort or closed socket."""

    def __init__(
        self, scp: StoreSCP, sock: socket.socket, peer: str, number: int, slot: int = PENDING
    ):
        self.scp = scp
        self.settings = scp.settings
        self.sock = sock
        self.peer = peer
        self.id = f"{os.getpid()}-{number}"  # unique across receiver processes
        self.finished = threading.Event()
        self.calling_ae = ""
        self.called_ae = ""
        self.association: Association | None = None  # once accepted
        self.accepted: dict[int, tuple[str, str]] = {}  # context id -> (abstract, transfer)
        self.peer_maximum_pdu = 0
        self.stored = 0
        self.reader = ul.PDUReader(sock)
        self.slot: int | None = slot
        self.refused_address = slot == REFUSED  # the handler refused the source at accept
        self._ended = False
        # the message being received
        self.command: ul.Command | None = None
        self.command_context = 0
        self.command_parts: list[bytes | bytearray] = []
        self.command_size = 0
        self.dataset_parts: list[bytes | bytearray] = []
        self.dataset_size = 0

    def _extra(self) -> dict[str, object]:
        return {"association_id": self.id, "calling_ae": self.calling_ae, "peer": self.peer}

    def interrupt(self) -> None:
        """Called from another thread when the node stops: the next read sees end of stream."""
        try:
            # socket.socket's own shutdown: an SSLSocket's would drop its TLS state under us
            socket.socket.shutdown(self.sock, socket.SHUT_RD)
        except OSError:
            pass

    def run(self) -> None:
        started = time.monotonic()
        try:
            if not self._establish():
                return
            self._serve()
            log.info(
                "association released",
                extra={
                    **self._extra(),
                    "instances": self.stored,
                    "seconds": round(time.monotonic() - started, 3),
                },
            )
            self._free_slot()
            self._end(released=True)
            self._await_close()
        except ul.PeerClosed:
            if self.association is None:
                log.info("connection closed before association", extra=self._extra())
            elif self.scp.stopping.is_set():
                log.info("association aborted: node stopping", extra=self._extra())
                self._abort(ul.ABORT_SOURCE_USER, ul.ABORT_REASON_NOT_SPECIFIED)
            else:
                log.warning("peer closed the connection without release", extra=self._extra())
        except _PeerAborted:
            log.warning("association aborted by the peer", extra=self._extra())
        except TimeoutError:
            if self.association is None:  # PS3.8 ARTIM expiry: close, no A-ABORT
                log.warning(
                    "connection closed: no association request in time", extra=self._extra()
                )
            else:
                log.warning("association aborted: network timeout", extra=self._extra())
                self._abort(ul.ABORT_SOURCE_PROVIDER, ul.ABORT_REASON_NOT_SPECIFIED)
        except _PeerAbortedEarly:
            log.info("connection aborted by the peer before association", extra=self._extra())
        except ul.ProtocolError as exc:
            log.warning(
                "association aborted: %s", exc, extra={**self._extra(), "abort_reason": exc.reason}
            )
            self._abort(ul.ABORT_SOURCE_PROVIDER, exc.reason)
        except ssl.SSLError as exc:
            log.warning("connection ended: TLS: %s", exc.reason or exc, extra=self._extra())
        except OSError as exc:
            log.warning("connection ended: %s: %s", type(exc).__name__, exc, extra=self._extra())
        except Exception:  # noqa: BLE001 - one broken association must not reach the others
            log.exception("association failed", extra=self._extra())
            self._abort(ul.ABORT_SOURCE_PROVIDER, ul.ABORT_REASON_NOT_SPECIFIED)
        finally:
            self._free_slot()
            self._end(released=False)
            self._close()

    # --- establishment ----------------------------------------------------------------------
    def _establish(self) -> bool:
        settings = self.settings
        deadline = time.monotonic() + settings.association_request_timeout_seconds
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if settings.ssl_context is not None:
            self._handshake(settings.ssl_context, deadline)
        self.reader.deadline = deadline
        kind, length = self.reader.header()
        if kind == ul.PDU_ABORT:  # PS3.8 AA-2: an A-ABORT is never answered; just close
            raise _PeerAbortedEarly
        if kind != ul.PDU_ASSOCIATE_RQ:
            raise ul.unexpected(kind, "where an A-ASSOCIATE-RQ belongs")
        if length > ul.CONTROL_PDU_LIMIT:
            raise ul.ProtocolError(f"A-ASSOCIATE-RQ of {length} bytes")
        request = acse.read_request(self.reader.take(length))
        self.calling_ae, self.called_ae = request.calling_ae, request.called_ae
        association = Association(
            id=self.id,
            calling_ae=request.calling_ae,
            called_ae=request.called_ae,
            peer=self.peer,
            implementation_class_uid=request.implementation_class_uid,
            implementation_version_name=request.implementation_version_name,
        )
        refusal = self._refusal(request, association)
        if refusal is None and self.refused_address:  # refused at accept: never associated
            refusal = Rejection(
                acse.REJECT_PERMANENT,
                acse.SOURCE_SERVICE_USER,
                acse.USER_NO_REASON,
                "source address not allowed",
            )
        if refusal is not None:
            self._reject(refusal)
            return False
        if not self.scp.slots.take(ASSOCIATIONS):
            self._reject(
                Rejection(
                    acse.REJECT_TRANSIENT,
                    acse.SOURCE_PROVIDER_PRESENTATION,
                    acse.PRESENTATION_LOCAL_LIMIT_EXCEEDED,
                    "too many associations",
                )
            )
            return False
        self._free_slot()
        self.slot = ASSOCIATIONS
        self.association = association
        results = acse.negotiate(request.contexts, self.scp.contexts)
        self.accepted = {
            result.context_id: (result.abstract_syntax, result.transfer_syntax)
            for result in results
            if result.result == acse.RESULT_ACCEPTANCE
        }
        self.peer_maximum_pdu = request.maximum_length
        accept = acse.acceptance(
            request,
            results,
            settings.max_pdu_size,
            IMPLEMENTATION_CLASS_UID,
            IMPLEMENTATION_VERSION_NAME,
        )
        ul.send(self.sock, [accept], settings.network_timeout_seconds)
        log.info(
            "association accepted",
            extra={
                **self._extra(),
                "called_ae": self.called_ae,
                "accepted_contexts": len(self.accepted),
                "implementation_class_uid": request.implementation_class_uid,
                "implementation_version_name": request.implementation_version_name,
            },
        )
        return True

    def _refusal(
        self, request: acse.AssociateRequest, association: Association
    ) -> Rejection | None:
        if not request.protocol_version & acse.PROTOCOL_VERSION:
            return Rejection(
                acse.REJECT_PERMANENT,
                acse.SOURCE_PROVIDER_ACSE,
                acse.ACSE_PROTOCOL_VERSION_NOT_SUPPORTED,
                f"protocol version 0x{request.protocol_version:04X} not supported",
            )
        if request.application_context != acse.APPLICATION_CONTEXT_NAME:
            return Rejection(
                acse.REJECT_PERMANENT,
                acse.SOURCE_SERVICE_USER,
                acse.USER_CONTEXT_NAME_NOT_SUPPORTED,
                "application context not supported",
            )
        try:
            return self.scp.handler.association_requested(association)
        except Exception:  # noqa: BLE001 - the peer gets an answer whatever happens here
            log.exception("association request handler failed", extra=self._extra())
            return Rejection(
                acse.REJECT_TRANSIENT,
                acse.SOURCE_SERVICE_USER,
                acse.USER_NO_REASON,
                "association request handler failed",
            )

    def _handshake(self, context: ssl.SSLContext, deadline: float) -> None:
        """TLS handshake, whole within the association request's deadline."""
        self.sock = context.wrap_socket(self.sock, server_side=True, do_handshake_on_connect=False)
        self.reader = ul.PDUReader(self.sock)
        self.sock.setblocking(False)
        while True:
            try:
                self.sock.do_handshake()
                return
            except ssl.SSLWantReadError:
                wanted: tuple[list[socket.socket], list[socket.socket]] = ([self.sock], [])
            except ssl.SSLWantWriteError:
                wanted = ([], [self.sock])
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not any(select.select(*wanted, [], remaining)):
                raise TimeoutError("TLS handshake not completed in time")

    def _reject(self, refusal: Rejection) -> None:
        log.warning(
            "association rejected: %s",
            refusal.message,
            extra={
                **self._extra(),
                "called_ae": self.called_ae,
                "result": refusal.result,
                "source": refusal.source,
                "reason": refusal.reason,
            },
        )
        ul.send(
            self.sock,
            [ul.associate_reject(refusal.result, refusal.source, refusal.reason)],
            self.settings.network_timeout_seconds,
        )
        self._await_close()

    # --- the message loop -------------------------------------------------------------------
    def _serve(self) -> None:
        """Serve requests until the peer releases (return) or aborts (_PeerAborted)."""
        reader = self.reader
        timeout = self.settings.network_timeout_seconds
        maximum = self.settings.max_pdu_size
        while True:
            reader.begin(timeout)
            kind, length = reader.header()
            if kind == ul.PDU_DATA:
                if maximum and length > maximum:  # PS3.8 D.1: beyond what we advertised
                    raise ul.ProtocolError(
                        f"P-DATA-TF of {length} bytes exceeds the maximum length {maximum} "
                        "negotiated"
                    )
                self._data(length)
                continue
            if kind not in ul.KNOWN_PDU_TYPES:
                raise ul.unexpected(kind, "on an established association")
            if length > ul.CONTROL_PDU_LIMIT:
                raise ul.ProtocolError(f"PDU type 0x{kind:02X} of {length} bytes")
            reader.skip(length)
            if kind == ul.PDU_RELEASE_RQ:
                self._free_slot()  # the association is over: its slot is free before the RP
                ul.send(self.sock, [ul.release_response()], timeout)
                return
            if kind == ul.PDU_ABORT:
                # Series it touched complete by count or quiet period, not by release.
                raise _PeerAborted
            raise ul.unexpected(kind, "on an established association")

    def _data(self, length: int) -> None:
        """The PDV items of one P-DATA-TF PDU, read one by one; a dataset fragment is kept
        only while the dataset stays within its limit."""
        reader = self.reader
        limit = self.settings.max_dataset_bytes
        while length:
            if length < ul.PDV_OVERHEAD:
                raise ul.ProtocolError("truncated presentation data value item")
            item_length, context_id, control = reader.pdv()
            if item_length < 2 or item_length + 4 > length:
                raise ul.ProtocolError(f"invalid presentation data value item length {item_length}")
            length -= item_length + 4
            size = item_length - 2
            if context_id not in self.accepted:
                raise ul.ProtocolError(f"presentation context {context_id} was not accepted")
            if control & ul.CONTROL_COMMAND:
                if self.command is not None:
                    raise ul.ProtocolError(
                        "a command fragment where a dataset was expected",
                        ul.ABORT_UNEXPECTED_PARAMETER,
                    )
                self.command_size += size
                if self.command_size > COMMAND_LIMIT:
                    raise ul.ProtocolError(f"command set over {COMMAND_LIMIT} bytes")
                self.command_parts.append(reader.take(size))
                if control & ul.CONTROL_LAST:
                    command = ul.parse_command(b"".join(self.command_parts))
                    self.command_parts, self.command_size = [], 0
                    if command.has_dataset:
                        self.command, self.command_context = command, context_id
                        self.dataset_size = 0
                    else:
                        self._dispatch(command, context_id, None)
                continue
            if self.command is None or context_id != self.command_context:
                raise ul.ProtocolError(
                    "a dataset fragment without its command", ul.ABORT_UNEXPECTED_PARAMETER
                )
            self.dataset_size += size
            if self.dataset_size > limit:
                self.dataset_parts = []  # what was kept goes now; the rest is never kept
                reader.skip(size)
            else:
                self.dataset_parts.append(reader.take(size))
            if control & ul.CONTROL_LAST:
                command, parts = self.command, self.dataset_parts
                self.command, self.dataset_parts = None, []
                self._dispatch(command, context_id, parts)

    def _dispatch(
        self, command: ul.Command, context_id: int, dataset: list[bytes | bytearray] | None
    ) -> None:
        if command.field == ul.C_CANCEL_RQ:
            return  # nothing of ours runs long enough to cancel
        if command.message_id is None:
            raise ul.ProtocolError("request without MessageID")
        if command.field == ul.C_ECHO_RQ:
            self._respond(context_id, ul.C_ECHO_RSP, command, Verification.encode(), b"", SUCCESS)
        elif command.field == ul.C_STORE_RQ:
            outcome = self._store(command, context_id, dataset)
            self._respond(
                context_id,
                ul.C_STORE_RSP,
                command,
                command.sop_class_raw,
                command.sop_instance_raw,
                outcome.status,
                outcome.comment,
            )
        else:
            log.warning(
                "refused DIMSE command 0x%04X: only C-ECHO and C-STORE are served",
                command.field,
                extra=self._extra(),
            )
            self._respond(
                context_id,
                command.field | 0x8000,
                command,
                command.sop_class_raw,
                b"",
                UNRECOGNIZED_OPERATION,
                "only C-ECHO and C-STORE are served",
            )

    def _store(
        self, command: ul.Command, context_id: int, dataset: list[bytes | bytearray] | None
    ) -> StoreStatus:
        abstract_syntax, transfer_syntax = self.accepted[context_id]
        ids = {**self._extra(), "sop_instance_uid": command.sop_instance_uid}
        if dataset is None:
            log.warning("C-STORE without a dataset refused", extra=ids)
            return StoreStatus(CANNOT_UNDERSTAND, "C-STORE request without a dataset")
        if self.dataset_size > self.settings.max_dataset_bytes:
            log.warning(
                "C-STORE refused: dataset larger than the maximum",
                extra={
                    **ids,
                    "bytes": self.dataset_size,
                    "max_bytes": self.settings.max_dataset_bytes,
                },
            )
            return StoreStatus(
                OUT_OF_RESOURCES,
                f"dataset over {self.settings.max_dataset_bytes} bytes",
            )
        if command.sop_class_uid != abstract_syntax:
            log.warning("C-STORE on another SOP class's presentation context refused", extra=ids)
            return StoreStatus(
                SOP_CLASS_NOT_SUPPORTED, "AffectedSOPClassUID differs from the context's"
            )
        if not command.sop_instance_raw.isascii():
            log.warning("C-STORE refused: AffectedSOPInstanceUID is not ASCII", extra=ids)
            return StoreStatus(CANNOT_UNDERSTAND, "AffectedSOPInstanceUID is not a UID")
        assert self.association is not None
        header = part10_header(
            command.sop_class_uid, command.sop_instance_uid, transfer_syntax, self.calling_ae
        )
        data = b"".join([header, *dataset])
        dataset.clear()
        arrival = Arrival(
            association=self.association,
            context_id=context_id,
            sop_class_uid=command.sop_class_uid,
            sop_instance_uid=command.sop_instance_uid,
            transfer_syntax=transfer_syntax,
            data=data,
        )
        del data
        try:
            outcome = self.scp.handler.instance_arrived(arrival)
        except Exception as exc:  # noqa: BLE001 - a failure must become a failure status
            log.exception("instance handler failed", extra=ids)
            return StoreStatus(PROCESSING_FAILURE, type(exc).__name__)
        if outcome.status == SUCCESS:
            self.stored += 1
        return outcome

    def _respond(
        self,
        context_id: int,
        field: int,
        request: ul.Command,
        sop_class_uid: bytes,
        sop_instance_uid: bytes,
        status: int,
        comment: str | None = None,
    ) -> None:
        """A response command set; the UIDs are echoed exactly as the request carried them."""
        elements = []
        if sop_class_uid:
            elements.append(ul.element(ul.TAG_AFFECTED_SOP_CLASS, sop_class_uid))
        elements += [
            ul.element(ul.TAG_COMMAND_FIELD, ul.us(field)),
            ul.element(ul.TAG_MESSAGE_ID_RESPONDED, ul.us(request.message_id or 0)),
            ul.element(ul.TAG_DATASET_TYPE, ul.us(ul.NO_DATASET)),
            ul.element(ul.TAG_STATUS, ul.us(status)),
        ]
        if comment and status != SUCCESS:
            text = comment.encode("ascii", errors="replace")[:ERROR_COMMENT_LIMIT]
            elements.append(ul.element(ul.TAG_ERROR_COMMENT, text, pad=b" "))
        if sop_instance_uid:
            elements.append(ul.element(ul.TAG_AFFECTED_SOP_INSTANCE, sop_instance_uid))
        data = ul.command_set(*elements)
        limit = self.peer_maximum_pdu - ul.PDV_OVERHEAD if self.peer_maximum_pdu else len(data)
        buffers: list[bytes | memoryview] = []
        ul.frame(buffers, context_id, data, max(limit, 1), command=True, ends=True)
        ul.send(self.sock, buffers, self.settings.network_timeout_seconds)

    # --- endings ----------------------------------------------------------------------------
    def _free_slot(self) -> None:
        if self.slot is not None:
            self.scp.slots.give_back(self.slot)
            self.slot = None

    def _end(self, released: bool) -> None:
        if self._ended or self.association is None:
            return
        self._ended = True
        try:
            self.scp.handler.association_ended(self.association, released)
        except Exception:  # noqa: BLE001 - what it missed, quiet-period completion catches
            log.exception("association end handler failed", extra=self._extra())

    def _abort(self, source: int, reason: int) -> None:
        self._free_slot()
        try:
            ul.send(self.sock, [ul.abort(source, reason)], CLOSE_WAIT_SECONDS)
        except OSError:
            return
        self._await_close()

    def _await_close(self) -> None:
        """Let the peer read what we sent and close first, so that no reset discards it."""
        deadline = time.monotonic() + CLOSE_WAIT_SECONDS
        try:
            while (remaining := deadline - time.monotonic()) > 0:
                self.sock.settimeout(remaining)
                if not self.sock.recv(65536):
                    return
        except OSError:
            pass

    def _close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class _PeerAborted(Exception):
    """The peer sent an A-ABORT."""


class _PeerAbortedEarly(Exception):
    """The peer sent an A-ABORT where its A-ASSOCIATE-RQ belonged."""


def part10_header(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, source_ae: str
) -> bytes:
    """Preamble and file meta information (PS3.10 7.1) for a received dataset, with our
    implementation class UID and version name: the spool keeps each instance as a Part 10
    file."""
    elements = b"".join(
        (
            _meta(0x0001, b"OB", b"\x00\x01"),
            _meta(0x0002, b"UI", sop_class_uid.encode("ascii")),
            _meta(0x0003, b"UI", sop_instance_uid.encode("ascii")),
            _meta(0x0010, b"UI", transfer_syntax.encode("ascii")),
            _meta(0x0012, b"UI", IMPLEMENTATION_CLASS_UID.encode("ascii")),
            _meta(0x0013, b"SH", IMPLEMENTATION_VERSION_NAME.encode("ascii")),
            _meta(0x0016, b"AE", source_ae.encode("ascii", errors="replace")) if source_ae else b"",
        )
    )
    return _PREAMBLE + _meta(0x0000, b"UL", struct.pack("<I", len(elements))) + elements


def _meta(tag_element: int, vr: bytes, value: bytes) -> bytes:
    """One group-0002 element in explicit VR little endian."""
    if len(value) % 2:
        value += b"\x00" if vr == b"UI" else b" "
    if vr == b"OB":
        return struct.pack("<HH2sHI", 0x0002, tag_element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, tag_element, vr, len(value)) + value
