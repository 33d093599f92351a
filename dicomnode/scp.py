"""The DICOM listener: C-ECHO, C-STORE of every storage class, access control and TLS.

Each C-STORE handler hands the encoded bytes to ``Intake`` and answers with its status; series
completion runs right after in the same association thread, which keeps the order simple and
still lets four or more associations store in parallel.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
import threading
from collections import defaultdict

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
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from dicomnode.assembly import SeriesAssembler
from dicomnode.config import Config, TLSSettings
from dicomnode.intake import Intake, Received

log = logging.getLogger("dicomnode.scp")

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

DUL_IDLE_SLEEP_SECONDS = 0.0002
REJECT_PERMANENT = 0x01
SOURCE_SERVICE_USER = 0x01
DIAG_NO_REASON = 0x01
DIAG_CALLING_AE_NOT_RECOGNISED = 0x03
DIAG_CALLED_AE_NOT_RECOGNISED = 0x07


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


class StoreSCP:
    def __init__(self, config: Config, intake: Intake, assembler: SeriesAssembler):
        self.config = config
        self.intake = intake
        self.assembler = assembler
        self._touched: dict[int, set[int]] = defaultdict(set)
        self._lock = threading.Lock()
        self._server: ThreadedAssociationServer | None = None
        self._networks = config.node.accept.networks()
        self._calling = set(config.node.accept.calling_ae_titles)

    def build_ae(self) -> AE:
        node = self.config.node
        ae = AE(ae_title=node.ae_title)
        ae.maximum_pdu_size = node.max_pdu_size
        ae.network_timeout = node.network_timeout_seconds
        ae.maximum_associations = node.max_associations
        ae.add_supported_context(Verification)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ACCEPTED_TRANSFER_SYNTAXES)
        return ae

    def start(self) -> ThreadedAssociationServer:
        node = self.config.node
        ae = self.build_ae()
        handlers = [
            (evt.EVT_CONN_OPEN, self._on_connection),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_ABORTED, self._on_aborted),
        ]
        context = server_ssl_context(node.tls) if node.tls else None
        server = ae.start_server(
            (node.bind_address, node.port), block=False, evt_handlers=handlers, ssl_context=context
        )
        assert server is not None
        self._server = server
        log.info(
            "listening",
            extra={"ae_title": node.ae_title, "port": node.port, "tls": bool(node.tls)},
        )
        return server

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    # --- handlers --------------------------------------------------------------------------
    def _on_connection(self, event: evt.Event) -> None:
        tune_association(event.assoc)

    def _on_requested(self, event: evt.Event) -> None:
        primitive = event.assoc.requestor.primitive
        calling = _text(primitive.calling_ae_title)
        called = _text(primitive.called_ae_title)
        peer = event.assoc.requestor.address
        extra = {"calling_ae": calling, "peer": peer, "called_ae": called}
        if self._calling and calling not in self._calling:
            log.warning("association rejected: calling AE title not allowed", extra=extra)
            _reject(event.assoc, DIAG_CALLING_AE_NOT_RECOGNISED)
            return
        if self._networks and not self._peer_allowed(peer):
            log.warning("association rejected: source address not allowed", extra=extra)
            _reject(event.assoc, DIAG_NO_REASON)
            return
        if called != self.config.node.ae_title:
            log.warning("association rejected: called AE title is not ours", extra=extra)
            _reject(event.assoc, DIAG_CALLED_AE_NOT_RECOGNISED)
            return
        log.info("association requested", extra=extra)

    def _peer_allowed(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self._networks)

    def _on_store(self, event: evt.Event) -> int:
        assoc = event.assoc
        request = event.request
        item = Received(
            data=event.encoded_dataset(include_meta=True),
            sop_class_uid=str(request.AffectedSOPClassUID),
            sop_instance_uid=str(request.AffectedSOPInstanceUID),
            calling_ae=assoc.requestor.ae_title.strip(),
            peer=assoc.requestor.address,
            association_id=str(assoc.native_id),
        )
        outcome = self.intake.receive(item)
        if outcome.series_id is not None and not outcome.duplicate:
            with self._lock:
                self._touched[id(assoc)].add(outcome.series_id)
        if outcome.count_reached:
            try:
                self.assembler.after_store(outcome.series_id)
            except Exception:  # noqa: BLE001 - the instance is stored; the monitor retries
                log.exception(
                    "completion check failed", extra={"sop_instance_uid": item.sop_instance_uid}
                )
        return outcome.status

    def _on_released(self, event: evt.Event) -> None:
        with self._lock:
            touched = self._touched.pop(id(event.assoc), set())
        if touched:
            try:
                self.assembler.after_release(touched)
            except Exception:  # noqa: BLE001 - quiet-period completion still applies
                log.exception("completion after release failed")

    def _on_aborted(self, event: evt.Event) -> None:
        with self._lock:
            self._touched.pop(id(event.assoc), None)


def tune_association(assoc: object) -> None:
    """Cut the two waits that dominate a small C-STORE's round trip on loopback.

    Nagle's algorithm against the peer's delayed ACKs stalls each response for ~40 ms, so the
    socket gets TCP_NODELAY. pynetdicom's DUL thread sleeps ``_run_loop_delay`` (1 ms) whenever
    its socket is idle, which it is between every request and response: 0.2 ms doubled the
    instances/s of a bare pynetdicom SCP (bench/bench_intake.py) for ~1% of a core per open
    association. The attribute is private but read on every loop, so setting it is safe.
    """
    dul = getattr(assoc, "dul", None)
    sock = getattr(getattr(dul, "socket", None), "socket", None)
    if isinstance(sock, socket.socket):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
    if dul is not None and hasattr(dul, "_run_loop_delay"):
        dul._run_loop_delay = DUL_IDLE_SLEEP_SECONDS


def _reject(assoc: object, diagnostic: int) -> None:
    """Send A-ASSOCIATE-RJ and wait until it is on the wire before the socket is closed."""
    assoc.acse.send_reject(REJECT_PERMANENT, SOURCE_SERVICE_USER, diagnostic)  # type: ignore[attr-defined]
    assoc.kill()  # type: ignore[attr-defined]


def _text(value: object) -> str:
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    return str(value or "").strip()
