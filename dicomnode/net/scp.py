"""The DICOM listener: C-ECHO, C-STORE of every storage class, access control and TLS.

Why not pynetdicom's ``AE.start_server``: every association there runs a DUL thread and a
reactor thread that pass each PDU through queues and poll with sleeps, and every request and
response goes through validated primitives and pydicom datasets. Measured, that machinery cost
~2.5 ms per instance on top of our ~1.5 ms of durable intake, and held the node at 0.44x
Orthanc's instances/s (``bench/bench_intake.py``). Here one thread serves one association with
blocking reads: a C-STORE's fragments are joined as they arrive, handed to ``Intake`` and
answered with a hand-encoded response.

The association request is read and answered in ``acse.py`` (pynetdicom's decoding and
negotiation cost ~9 ms per association); pynetdicom still encodes the rare A-ASSOCIATE-RJ,
A-RELEASE-RP and A-ABORT PDUs.
Series completion runs right after each store in the association's thread, which keeps the
order simple and still lets several associations store in parallel.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import os
import socket
import socketserver
import ssl
import struct
import threading
import time
from typing import BinaryIO

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
from pynetdicom import (
    PYNETDICOM_IMPLEMENTATION_UID,
    PYNETDICOM_IMPLEMENTATION_VERSION,
    AllStoragePresentationContexts,
)
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_RJ, A_RELEASE_RP
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.sop_class import Verification

from dicomnode.config import Config, TLSSettings
from dicomnode.net import acse, ul
from dicomnode.receive.assembly import SeriesAssembler
from dicomnode.receive.intake import CANNOT_UNDERSTAND, SUCCESS, Intake, Received

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

REJECT_PERMANENT = 0x01
REJECT_TRANSIENT = 0x02
SOURCE_SERVICE_USER = 0x01
SOURCE_PROVIDER_PRESENTATION = 0x03
DIAG_NO_REASON = 0x01
DIAG_CONTEXT_NAME_NOT_SUPPORTED = 0x02
DIAG_CALLING_AE_NOT_RECOGNISED = 0x03
DIAG_CALLED_AE_NOT_RECOGNISED = 0x07
DIAG_LOCAL_LIMIT_EXCEEDED = 0x02
ABORT_SOURCE_USER = 0x00
ABORT_SOURCE_PROVIDER = 0x02
ABORT_UNEXPECTED_PDU = 0x02
ABORT_INVALID_PARAMETER = 0x06
SOP_CLASS_NOT_SUPPORTED = 0x0122
UNRECOGNIZED_OPERATION = 0x0211

# A PDU is held in memory whole; bigger than this is an attack or a broken peer, not an image
# fragment (senders cut datasets into PDUs of our advertised maximum, usually 16-64 KiB).
PDU_MEMORY_LIMIT = 64 * 2**20
READ_BUFFER_BYTES = 256 * 1024
CLOSE_WAIT_SECONDS = 5.0  # how long the peer may take to close after our RJ, RP or abort
STOP_JOIN_SECONDS = 10.0
ERROR_COMMENT_LIMIT = 64  # LO
_PREAMBLE = b"\x00" * 128 + b"DICM"


def server_ssl_context(tls: TLSSettings) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(tls.certificate), str(tls.private_key))
    if tls.ca_certificates:
        context.load_verify_locations(str(tls.ca_certificates))
        context.verify_mode = (
            ssl.CERT_REQUIRED if tls.require_client_certificate else ssl.CERT_OPTIONAL
        )
    return context


def supported_contexts() -> dict[str, list[str]]:
    """Verification, and every storage SOP class with the transfer syntaxes we can decode, in
    our order of preference."""
    contexts: dict[str, list[str]] = {
        Verification: [ImplicitVRLittleEndian, ExplicitVRLittleEndian]
    }
    for context in AllStoragePresentationContexts:
        contexts[str(context.abstract_syntax)] = [str(s) for s in ACCEPTED_TRANSFER_SYNTAXES]
    return contexts


class _Listener(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False  # StoreSCP.stop joins the association threads with a bound

    def __init__(self, address: tuple[str, int], scp: StoreSCP, shared: socket.socket | None):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.scp = scp
        super().__init__(address, _Handler, bind_and_activate=shared is None)
        if shared is not None:
            # Several receiver processes accept on one inherited socket: non-blocking, so the
            # processes that lose the race for a connection go back to waiting.
            self.socket.close()
            self.socket = shared
            self.socket.setblocking(False)
            self.server_address = shared.getsockname()


def listening_socket(bind_address: str, port: int) -> socket.socket:
    """The bound, listening TCP socket that receiver processes share."""
    family = socket.AF_INET6 if ":" in bind_address else socket.AF_INET
    return socket.create_server((bind_address, port), family=family, backlog=128)


class _Handler(socketserver.BaseRequestHandler):
    server: _Listener

    def handle(self) -> None:
        self.server.scp.serve_connection(self.request, self.client_address[0])


class StoreSCP:
    """The listener of one process; ``receiver.py`` runs several on one shared socket."""

    def __init__(
        self,
        config: Config,
        intake: Intake,
        assembler: SeriesAssembler,
        max_associations: int | None = None,
    ):
        self.config = config
        self.max_associations = max_associations or config.node.max_associations
        self.intake = intake
        self.assembler = assembler
        self._networks = config.node.accept.networks()
        self._calling = set(config.node.accept.calling_ae_titles)
        self.contexts = supported_contexts()
        self._ssl_context = server_ssl_context(config.node.tls) if config.node.tls else None
        self._server: _Listener | None = None
        self._thread: threading.Thread | None = None
        self._active: dict[int, _Association] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.stopping = threading.Event()

    def start(self, shared: socket.socket | None = None) -> None:
        node = self.config.node
        self.stopping.clear()
        self._server = _Listener((node.bind_address, node.port), self, shared)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name="scp-listener"
        )
        self._thread.start()
        log.info(
            "listening",
            extra={"ae_title": node.ae_title, "port": self.port, "tls": bool(node.tls)},
        )

    def stop(self) -> None:
        """Stop accepting, let each association finish the instance it is storing, then abort.

        Shutting the read side makes each association's next read see the end of the stream,
        while a response being written still reaches the sender: an instance is either
        acknowledged and stored, or unacknowledged and sent again by the scanner.
        """
        if self._server is None:
            return
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            associations = list(self._active.values())
        for association in associations:
            association.interrupt()
        deadline = time.monotonic() + STOP_JOIN_SECONDS
        for association in associations:
            association.finished.wait(max(deadline - time.monotonic(), 0))
        self._server = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    # --- one connection ---------------------------------------------------------------------
    def serve_connection(self, raw: socket.socket, peer: str) -> None:
        number = next(self._ids)
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            raw.settimeout(self.config.node.network_timeout_seconds)
            sock = raw
            if self._ssl_context is not None:
                sock = self._ssl_context.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError) as exc:
            log.warning(
                "connection refused before association: %s",
                exc,
                extra={"peer": peer, "association_id": number},
            )
            return
        association = _Association(self, sock, peer, number)
        with self._lock:
            self._active[number] = association
            crowded = len(self._active) > self.max_associations
        try:
            association.run(crowded)
        finally:
            with self._lock:
                self._active.pop(number, None)
            association.finished.set()

    # --- decisions the associations ask for -------------------------------------------------
    def refusal(self, calling: str, called: str, peer: str) -> tuple[int, str] | None:
        """(reject diagnostic, log message) when the association must be refused."""
        if self._calling and calling not in self._calling:
            return DIAG_CALLING_AE_NOT_RECOGNISED, "calling AE title not allowed"
        if self._networks and not self._peer_allowed(peer):
            return DIAG_NO_REASON, "source address not allowed"
        if called != self.config.node.ae_title:
            return DIAG_CALLED_AE_NOT_RECOGNISED, "called AE title is not ours"
        return None

    def _peer_allowed(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self._networks)


class _Association:
    """One accepted connection, from A-ASSOCIATE-RQ to release, abort or closed socket."""

    def __init__(self, scp: StoreSCP, sock: socket.socket, peer: str, number: int):
        self.scp = scp
        self.sock = sock
        self.peer = peer
        self.id = f"{os.getpid()}-{number}"  # unique across receiver processes
        self.finished = threading.Event()
        self.calling_ae = ""
        self.accepted: dict[int, tuple[str, str]] = {}  # context id -> (abstract, transfer)
        self.peer_maximum_pdu = 0
        self.touched: set[int] = set()
        self.stored = 0
        self.stream: BinaryIO = sock.makefile("rb", buffering=READ_BUFFER_BYTES)
        # Not the advertised max_pdu_size: a sender overshooting it a little is still served.
        self.pdu_limit = PDU_MEMORY_LIMIT

    def _extra(self) -> dict[str, object]:
        return {"association_id": self.id, "calling_ae": self.calling_ae, "peer": self.peer}

    def interrupt(self) -> None:
        """Called from another thread when the node stops: the next read sees end of stream."""
        try:
            # socket.socket's own shutdown: an SSLSocket's would drop its TLS state under us
            socket.socket.shutdown(self.sock, socket.SHUT_RD)
        except OSError:
            pass

    def run(self, crowded: bool) -> None:
        started = time.monotonic()
        try:
            if self._establish(crowded) and self._serve():
                log.info(
                    "association released",
                    extra={
                        **self._extra(),
                        "instances": self.stored,
                        "seconds": round(time.monotonic() - started, 3),
                    },
                )
        except ul.PeerClosed:
            if self.scp.stopping.is_set():
                log.info("association aborted: node stopping", extra=self._extra())
                self._abort(ABORT_SOURCE_USER, 0x00)
            else:
                log.warning("peer closed the connection without release", extra=self._extra())
        except TimeoutError:
            log.warning("association aborted: network timeout", extra=self._extra())
            self._abort(ABORT_SOURCE_PROVIDER, 0x00)
        except ul.ProtocolError as exc:
            log.warning("association aborted: %s", exc, extra=self._extra())
            self._abort(ABORT_SOURCE_PROVIDER, ABORT_INVALID_PARAMETER)
        except (OSError, ValueError) as exc:
            log.warning("association ended: %s: %s", type(exc).__name__, exc, extra=self._extra())
        except Exception:  # noqa: BLE001 - one broken association must not reach the others
            log.exception("association failed", extra=self._extra())
            self._abort(ABORT_SOURCE_PROVIDER, 0x00)
        finally:
            self._close()

    # --- establishment ----------------------------------------------------------------------
    def _establish(self, crowded: bool) -> bool:
        kind, body = ul.read_pdu_buffered(self.stream, self.pdu_limit)
        if kind != ul.PDU_ASSOCIATE_RQ:
            raise ul.ProtocolError(f"expected A-ASSOCIATE-RQ, got PDU type 0x{kind:02X}")
        request = acse.read_request(body)
        self.calling_ae = request.calling_ae
        called = request.called_ae
        extra = {**self._extra(), "called_ae": called}
        if crowded:
            log.warning("association rejected: too many associations", extra=extra)
            self._reject(REJECT_TRANSIENT, SOURCE_PROVIDER_PRESENTATION, DIAG_LOCAL_LIMIT_EXCEEDED)
            return False
        refusal = self.scp.refusal(self.calling_ae, called, self.peer)
        if refusal is None and request.application_context != acse.APPLICATION_CONTEXT_NAME:
            refusal = (DIAG_CONTEXT_NAME_NOT_SUPPORTED, "application context not supported")
        if refusal is not None:
            log.warning("association rejected: %s", refusal[1], extra=extra)
            self._reject(REJECT_PERMANENT, SOURCE_SERVICE_USER, refusal[0])
            return False
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
            self.scp.config.node.max_pdu_size,
            PYNETDICOM_IMPLEMENTATION_UID,
            PYNETDICOM_IMPLEMENTATION_VERSION,
        )
        ul.send(self.sock, [accept])
        log.info("association accepted", extra={**extra, "accepted_contexts": len(self.accepted)})
        return True

    def _reject(self, result: int, source: int, diagnostic: int) -> None:
        primitive = A_ASSOCIATE()
        primitive.result = result
        primitive.result_source = source
        primitive.diagnostic = diagnostic
        ul.send(self.sock, [A_ASSOCIATE_RJ(primitive).encode()])
        self._await_close()

    # --- the message loop -------------------------------------------------------------------
    def _serve(self) -> bool:
        """Serve requests until the peer releases (True) or aborts (False)."""
        command: ul.Command | None = None
        command_context = 0
        command_parts: list[bytes] = []
        dataset_parts: list[memoryview] = []
        while True:
            kind, body = ul.read_pdu_buffered(self.stream, self.pdu_limit)
            if kind == ul.PDU_RELEASE_RQ:
                ul.send(self.sock, [A_RELEASE_RP().encode()])
                self._released()
                self._await_close()
                return True
            if kind == ul.PDU_ABORT:
                # Series it touched complete by count or quiet period, not by release.
                log.warning("association aborted by the peer", extra=self._extra())
                return False
            if kind != ul.PDU_DATA:
                raise ul.ProtocolError(f"unexpected PDU type 0x{kind:02X}")
            for context_id, control, fragment in ul.pdv_items(memoryview(body)):
                if context_id not in self.accepted:
                    raise ul.ProtocolError(f"presentation context {context_id} was not accepted")
                if control & ul.CONTROL_COMMAND:
                    if command is not None:
                        raise ul.ProtocolError("a command fragment where a dataset was expected")
                    command_parts.append(bytes(fragment))
                    if control & ul.CONTROL_LAST:
                        command = ul.parse_command(b"".join(command_parts))
                        command_context, command_parts = context_id, []
                        if not command.has_dataset:
                            self._dispatch(command, context_id, None)
                            command = None
                    continue
                if command is None or context_id != command_context:
                    raise ul.ProtocolError("a dataset fragment without its command")
                dataset_parts.append(fragment)
                if control & ul.CONTROL_LAST:
                    self._dispatch(command, context_id, dataset_parts)
                    command, dataset_parts = None, []

    def _dispatch(
        self, command: ul.Command, context_id: int, dataset: list[memoryview] | None
    ) -> None:
        if command.field == ul.C_CANCEL_RQ:
            return  # nothing of ours runs long enough to cancel
        if command.message_id is None:
            raise ul.ProtocolError("request without MessageID")
        if command.field == ul.C_ECHO_RQ:
            self._respond(context_id, ul.C_ECHO_RSP, command, Verification, "", SUCCESS, None)
        elif command.field == ul.C_STORE_RQ:
            status, reason = self._store(command, context_id, dataset)
            self._respond(
                context_id,
                ul.C_STORE_RSP,
                command,
                command.sop_class_uid,
                command.sop_instance_uid,
                status,
                reason,
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
                command.sop_class_uid,
                "",
                UNRECOGNIZED_OPERATION,
                "only C-ECHO and C-STORE are served",
            )

    def _store(
        self, command: ul.Command, context_id: int, dataset: list[memoryview] | None
    ) -> tuple[int, str | None]:
        abstract_syntax, transfer_syntax = self.accepted[context_id]
        ids = {**self._extra(), "sop_instance_uid": command.sop_instance_uid}
        if dataset is None:
            log.warning("C-STORE without a dataset refused", extra=ids)
            return CANNOT_UNDERSTAND, "C-STORE request without a dataset"
        if command.sop_class_uid != abstract_syntax:
            log.warning("C-STORE on another SOP class's presentation context refused", extra=ids)
            return SOP_CLASS_NOT_SUPPORTED, "AffectedSOPClassUID differs from the context's"
        header = part10_header(
            command.sop_class_uid, command.sop_instance_uid, transfer_syntax, self.calling_ae
        )
        item = Received(
            data=b"".join([header, *dataset]),
            sop_class_uid=command.sop_class_uid,
            sop_instance_uid=command.sop_instance_uid,
            calling_ae=self.calling_ae,
            peer=self.peer,
            association_id=self.id,
        )
        outcome = self.scp.intake.receive(item)
        if outcome.status == SUCCESS:
            self.stored += 1
        if outcome.series_id is not None and not outcome.duplicate:
            self.touched.add(outcome.series_id)
        if outcome.count_reached:
            try:
                self.scp.assembler.after_store(outcome.series_id)
            except Exception:  # noqa: BLE001 - the instance is stored; the monitor retries
                log.exception("completion check failed", extra=ids)
        return outcome.status, outcome.reason

    def _respond(
        self,
        context_id: int,
        field: int,
        request: ul.Command,
        sop_class_uid: str,
        sop_instance_uid: str,
        status: int,
        comment: str | None,
    ) -> None:
        elements = []
        if sop_class_uid:
            elements.append(ul.element(ul.TAG_AFFECTED_SOP_CLASS, sop_class_uid.encode("ascii")))
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
            elements.append(
                ul.element(ul.TAG_AFFECTED_SOP_INSTANCE, sop_instance_uid.encode("ascii"))
            )
        data = ul.command_set(*elements)
        limit = self.peer_maximum_pdu - ul.PDV_OVERHEAD if self.peer_maximum_pdu else len(data)
        buffers: list[bytes | memoryview] = []
        ul.frame(buffers, context_id, data, max(limit, 1), command=True, ends=True)
        ul.send(self.sock, buffers)

    # --- endings ----------------------------------------------------------------------------
    def _released(self) -> None:
        if self.touched:
            try:
                self.scp.assembler.after_release(self.touched)
            except Exception:  # noqa: BLE001 - quiet-period completion still applies
                log.exception("completion after release failed", extra=self._extra())

    def _abort(self, source: int, reason: int) -> None:
        abort = A_ABORT_RQ()
        abort.source = source
        abort.reason_diagnostic = reason
        try:
            ul.send(self.sock, [abort.encode()])
        except OSError:
            return
        self._await_close()

    def _await_close(self) -> None:
        """Let the peer read what we sent and close first, so that no reset discards it."""
        try:
            self.sock.settimeout(CLOSE_WAIT_SECONDS)
            while self.sock.recv(65536):
                pass
        except OSError:
            pass

    def _close(self) -> None:
        try:
            self.stream.close()
            self.sock.close()
        except OSError:
            pass


def part10_header(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, source_ae: str
) -> bytes:
    """Preamble and file meta information (PS3.10 7.1) for a received dataset, as written by
    pynetdicom before: the spool keeps each instance as a Part 10 file."""
    elements = b"".join(
        (
            _meta(0x0001, b"OB", b"\x00\x01"),
            _meta(0x0002, b"UI", sop_class_uid.encode("ascii")),
            _meta(0x0003, b"UI", sop_instance_uid.encode("ascii")),
            _meta(0x0010, b"UI", transfer_syntax.encode("ascii")),
            _meta(0x0012, b"UI", PYNETDICOM_IMPLEMENTATION_UID.encode("ascii")),
            _meta(0x0013, b"SH", PYNETDICOM_IMPLEMENTATION_VERSION.encode("ascii")),
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
