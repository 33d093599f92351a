"""The C-STORE sender (SCU): one association to one destination, many instances over it.

Files are sent as they lie in the spool: the dataset bytes after the file meta go on the wire
unchanged when the destination accepts the stored transfer syntax. For each (SOP class, stored
syntax) pair we propose a context with that syntax alone, and once per SOP class a context with
explicit (then implicit) VR little endian; when only the latter is accepted the dataset is
decoded with pydicom and sent as explicit little endian.

Why a plain pynetdicom sender managed only 40-60 instances/s into DCMTK-based receivers:

1. Nagle's algorithm on the requestor socket. Each C-STORE is a small command PDU followed by
   the data PDUs; with Nagle on, the tail of the dataset waits for the peer's ACK of the previous
   small segment, and the peer delays that ACK by up to 40 ms. ``TCP_NODELAY`` is set on the
   socket as soon as it connects (``EVT_CONN_OPEN``).
2. Polling. ``Association.send_c_store`` pauses the association's own reactor thread for every
   message and waits for it in 0.1 ms steps while that thread sleeps 1 ms per loop, and the DUL
   thread sleeps 1 ms whenever it found nothing to do. We pause the association reactor once for
   the whole batch and let the DUL thread poll at ``DUL_LOOP_DELAY`` (see ``bench/bench_send.py``
   for the figures).
"""

from __future__ import annotations

import io
import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode, split_dataset
from pynetdicom.presentation import build_context

from dicomnode.config import Destination, TLSSettings

log = logging.getLogger("dicomnode.sender")

# Send spooled files in PDU-sized chunks straight from disk: no decode, no re-encode, same bytes.
_config.STORE_SEND_CHUNKED_DATASET = True

DUL_LOOP_DELAY = 0.0001  # seconds the DUL thread sleeps when idle (pynetdicom default: 0.001)
MAX_CONTEXTS = 128

SUCCESS = "success"
WARNING = "warning"
FAILURE = "failure"
# C-STORE warning statuses (PS3.4 B.2.3): coercion, elements discarded, not validated
WARNING_STATUSES = {0x0001, 0xB000, 0xB006, 0xB007}


@dataclass(frozen=True)
class Item:
    """One file to send; ``key`` comes back in its ``Result`` (the outbox row id)."""

    key: object
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


@dataclass(frozen=True)
class Result:
    key: object
    outcome: str  # success | warning | failure
    status: int | None
    error: str | None = None
    converted: bool = False


class AssociationFailed(Exception):
    """No association (refused, unreachable, rejected): nothing was sent."""


def outcome_of(status: int | None) -> str:
    if status is None:
        return FAILURE
    if status == 0x0000:
        return SUCCESS
    if status in WARNING_STATUSES or (status & 0xF000) == 0xB000:
        return WARNING
    return FAILURE


def client_ssl_context(tls: TLSSettings) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False  # PACS certificates name AE hosts inconsistently; CA pins
    if tls.ca_certificates:
        context.load_verify_locations(str(tls.ca_certificates))
    context.load_cert_chain(str(tls.certificate), str(tls.private_key))
    return context


def _nodelay(event: evt.Event) -> None:
    sock = getattr(event.assoc.dul.socket, "socket", None)
    if isinstance(sock, socket.socket):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def propose_contexts(items: Iterable[Item]) -> list:
    """(class, stored syntax) contexts plus one uncompressed fallback per class, at most 128."""
    pairs: list[tuple[str, str]] = []
    classes: list[str] = []
    for item in items:
        pair = (item.sop_class_uid, item.transfer_syntax_uid)
        if pair not in pairs:
            pairs.append(pair)
        if item.sop_class_uid not in classes:
            classes.append(item.sop_class_uid)
    contexts = []
    for sop_class in classes:
        contexts.append(build_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]))
    for sop_class, syntax in pairs:
        if syntax not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            contexts.append(build_context(sop_class, [syntax]))
        elif syntax == ImplicitVRLittleEndian:
            contexts.append(build_context(sop_class, [ImplicitVRLittleEndian]))
    if len(contexts) > MAX_CONTEXTS:
        raise ValueError(f"{len(contexts)} presentation contexts needed, at most {MAX_CONTEXTS}")
    return contexts


def batch_fitting_contexts(items: Sequence[Item]) -> list[Item]:
    """The longest prefix of ``items`` whose contexts fit in one association."""
    chosen: list[Item] = []
    for item in items:
        try:
            propose_contexts([*chosen, item])
        except ValueError:
            break
        chosen.append(item)
    return chosen


class Sender:
    """Sends batches of spooled files to one destination, one association per batch."""

    def __init__(
        self,
        calling_ae: str,
        destination: Destination,
        connect_timeout: float = 10.0,
        dimse_timeout: float = 60.0,
        tcp_nodelay: bool = True,
        low_latency: bool = True,
    ):
        self.calling_ae = calling_ae
        self.destination = destination
        self.connect_timeout = connect_timeout
        self.dimse_timeout = dimse_timeout
        self.tcp_nodelay = tcp_nodelay
        self.low_latency = low_latency

    def send(
        self,
        items: Sequence[Item],
        on_result: Callable[[Result], None],
        should_stop: Callable[[], bool] = lambda: False,
    ) -> int:
        """Send ``items`` over one association, reporting each result as it comes.

        Stops between instances when ``should_stop()`` turns true (the rest stay unreported).
        Raises ``AssociationFailed`` when no association could be established. Returns how many
        items were reported.
        """
        if not items:
            return 0
        dest = self.destination
        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout = self.connect_timeout
        ae.connection_timeout = self.connect_timeout
        ae.dimse_timeout = self.dimse_timeout
        ae.network_timeout = self.dimse_timeout
        ae.requested_contexts = propose_contexts(items)
        handlers = [(evt.EVT_CONN_OPEN, _nodelay)] if self.tcp_nodelay else []
        tls_args = None
        if dest.tls is not None:
            tls_args = (client_ssl_context(dest.tls), None)
        try:
            assoc = ae.associate(
                dest.host,
                dest.port,
                ae_title=dest.ae_title,
                evt_handlers=handlers,
                tls_args=tls_args,
            )
        except Exception as exc:  # noqa: BLE001 - socket/TLS errors: the destination is down
            raise AssociationFailed(f"{type(exc).__name__}: {exc}") from None
        if not assoc.is_established:
            if assoc.is_rejected:
                raise AssociationFailed(f"association rejected by {dest.ae_title}")
            raise AssociationFailed(
                f"no association with {dest.ae_title}@{dest.host}:{dest.port} "
                "(refused, unreachable or aborted)"
            )
        reported = 0
        try:
            if self.low_latency:
                assoc.dul._run_loop_delay = DUL_LOOP_DELAY
                _pause_reactor(assoc)
            accepted = _accepted(assoc)
            message_id = 0
            for item in items:
                if should_stop():
                    break
                if not assoc.is_established:
                    on_result(Result(item.key, FAILURE, None, "association lost"))
                    reported += 1
                    continue
                message_id = (message_id % 65535) + 1
                on_result(self._send_one(assoc, accepted, item, message_id))
                reported += 1
        finally:
            if self.low_latency:
                assoc._reactor_checkpoint.set()
            if assoc.is_established:
                assoc.release()
        return reported

    def _send_one(self, assoc, accepted: dict, item: Item, message_id: int) -> Result:  # type: ignore[no-untyped-def]
        stored = (item.sop_class_uid, item.transfer_syntax_uid)
        converted = False
        try:
            if stored in accepted:
                context_id, syntax = accepted[stored]
                request = _request(item, message_id)
                _, offset = split_dataset(item.path)
                request._dataset_path = (item.path, offset)
            else:
                fallback = accepted.get(
                    (item.sop_class_uid, ExplicitVRLittleEndian)
                ) or accepted.get((item.sop_class_uid, ImplicitVRLittleEndian))
                if fallback is None:
                    return Result(
                        item.key,
                        FAILURE,
                        None,
                        f"destination accepted no transfer syntax for {item.sop_class_uid} "
                        f"(stored as {item.transfer_syntax_uid})",
                    )
                context_id, syntax = fallback
                request = _request(item, message_id)
                request.DataSet = io.BytesIO(_converted(item.path, UID(syntax)))
                converted = True
        except Exception as exc:  # noqa: BLE001 - a bad file fails alone
            return Result(item.key, FAILURE, None, f"cannot prepare: {type(exc).__name__}: {exc}")
        if self.low_latency:
            assoc.dimse.send_msg(request, context_id)
            _, response = assoc.dimse.get_msg(block=True)
        else:
            assoc._reactor_checkpoint.clear()
            while not assoc._is_paused:
                time.sleep(0.0001)
            assoc.dimse.send_msg(request, context_id)
            _, response = assoc.dimse.get_msg(block=True)
            assoc._reactor_checkpoint.set()
        if response is None:
            assoc.abort()
            return Result(item.key, FAILURE, None, "no response (DIMSE timeout or abort)")
        if not response.is_valid_response:
            assoc.abort()
            return Result(item.key, FAILURE, None, "invalid C-STORE response")
        status = int(response.Status)
        outcome = outcome_of(status)
        error = None
        if outcome != SUCCESS:
            comment = getattr(response, "ErrorComment", None)
            error = f"status 0x{status:04X}" + (f": {comment}" if comment else "")
        return Result(item.key, outcome, status, error, converted)


def _pause_reactor(assoc) -> None:  # type: ignore[no-untyped-def]
    """Hold the association's reactor thread once for the whole batch (we are the only user)."""
    assoc._reactor_checkpoint.clear()
    deadline = time.monotonic() + 5
    while not assoc._is_paused and time.monotonic() < deadline:
        time.sleep(0.0001)


def _accepted(assoc) -> dict[tuple[str, str], tuple[int, str]]:  # type: ignore[no-untyped-def]
    accepted: dict[tuple[str, str], tuple[int, str]] = {}
    for context in assoc.accepted_contexts:
        syntax = str(context.transfer_syntax[0])
        accepted.setdefault((str(context.abstract_syntax), syntax), (context.context_id, syntax))
    return accepted


def _request(item: Item, message_id: int) -> C_STORE:
    request = C_STORE()
    request.MessageID = message_id
    request.AffectedSOPClassUID = item.sop_class_uid
    request.AffectedSOPInstanceUID = item.sop_instance_uid
    request.Priority = 2
    return request


def _converted(path: Path, syntax: UID) -> bytes:
    """Decode a stored file and encode it in an uncompressed little endian syntax."""
    dataset: Dataset = pydicom.dcmread(path)
    if dataset.file_meta.TransferSyntaxUID.is_compressed:
        dataset.decompress()
    encoded = encode(dataset, syntax.is_implicit_VR, True, False)
    if encoded is None:
        raise ValueError("could not encode the dataset")
    return encoded
