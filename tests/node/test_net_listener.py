"""The listener (``dicomnode.net.scp``) in-process with a recording handler, over raw sockets on
127.0.0.1: malformed and hostile traffic, deadlines, slots, the dataset size limit.

Every reply is checked to be DICOM: an A-ASSOCIATE-RJ, an A-ABORT or a status, never a bare
close (except where PS3.8 says close: no A-ASSOCIATE-RQ in time).
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
import tracemalloc
from dataclasses import dataclass, field

import pytest

from dicomnode.net import acse, ul
from dicomnode.net.handler import (
    CANNOT_UNDERSTAND,
    OUT_OF_RESOURCES,
    SUCCESS,
    AccessPolicy,
    Arrival,
    Association,
    Rejection,
    StoreStatus,
)

NODE = "IQTNODE"
MR = "1.2.840.10008.5.1.4.1.1.4"
VERIFICATION = "1.2.840.10008.1.1"
EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
CONTEXT = acse.APPLICATION_CONTEXT_NAME.encode()


@dataclass
class Recorder:
    """A handler that stores nothing and remembers everything."""

    access: AccessPolicy = field(default_factory=lambda: AccessPolicy(NODE))
    arrivals: list[Arrival] = field(default_factory=list)
    ended: list[tuple[Association, bool]] = field(default_factory=list)
    hold_end: threading.Event | None = None  # association_ended waits for it

    def association_requested(self, association: Association) -> Rejection | None:
        return self.access.check(association)

    def instance_arrived(self, arrival: Arrival) -> StoreStatus:
        self.arrivals.append(arrival)
        return StoreStatus(SUCCESS)

    def association_ended(self, association: Association, released: bool) -> None:
        if self.hold_end is not None:
            self.hold_end.wait(20)
        self.ended.append((association, released))


# --- a raw peer ---------------------------------------------------------------------------------
def _item(kind: int, value: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(value)) + value


def request_pdu(
    version: int = 1,
    context: bytes = CONTEXT,
    abstract: bytes = MR.encode(),
    transfers: tuple[bytes, ...] = (EXPLICIT.encode(),),
    implementation: bytes = b"1.2.3.4",
    calling: bytes = b"SCANNER",
    extra_contexts: bytes = b"",
) -> bytes:
    """An A-ASSOCIATE-RQ written byte by byte (not with our encoder), to be malformed at will."""
    presentation = bytes((1, 0, 0, 0)) + _item(0x30, abstract)
    presentation += b"".join(_item(0x40, t) for t in transfers)
    user = _item(0x51, struct.pack(">I", 16384)) + _item(0x52, implementation)
    body = (
        struct.pack(">HH", version, 0)
        + NODE.encode().ljust(16)
        + calling.ljust(16)
        + bytes(32)
        + _item(0x10, context)
        + _item(0x20, presentation)
        + extra_contexts
        + _item(0x50, user)
    )
    return struct.pack(">BBI", 1, 0, len(body)) + body


class Peer:
    def __init__(self, port: int, source: str = "127.0.0.1"):
        self.sock = socket.create_connection(
            ("127.0.0.1", port), timeout=10, source_address=(source, 0)
        )
        self.reader = ul.PDUReader(self.sock)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def pdu(self, seconds: float = 10) -> tuple[int, bytes] | None:
        """The next PDU, or None when the listener closed without one."""
        self.reader.begin(seconds)
        try:
            kind, body = self.reader.pdu(1 << 20)
        except (ul.PeerClosed, ConnectionResetError):
            return None
        return kind, bytes(body)

    def associate(self, **request: object) -> acse.AssociateAccept:
        self.send(request_pdu(**request))  # type: ignore[arg-type]
        answer = self.pdu()
        assert answer is not None and answer[0] == ul.PDU_ASSOCIATE_AC, answer
        return acse.read_acceptance(answer[1])

    def store(
        self,
        instance_uid: bytes,
        dataset: bytes | None,
        fragment: int = 65536,
        sop_class: bytes = MR.encode(),
    ) -> int:
        """One C-STORE on context 1; the response's status."""
        self.send_store(instance_uid, dataset, fragment, sop_class)
        return self.status()

    def send_store(
        self,
        instance_uid: bytes,
        dataset: bytes | None,
        fragment: int,
        sop_class: bytes = MR.encode(),
    ) -> None:
        command = ul.command_set(
            ul.element(ul.TAG_AFFECTED_SOP_CLASS, sop_class),
            ul.element(ul.TAG_COMMAND_FIELD, ul.us(ul.C_STORE_RQ)),
            ul.element(ul.TAG_MESSAGE_ID, ul.us(7)),
            ul.element(ul.TAG_PRIORITY, ul.us(0)),
            ul.element(
                ul.TAG_DATASET_TYPE, ul.us(ul.DATASET_PRESENT if dataset else ul.NO_DATASET)
            ),
            ul.element(ul.TAG_AFFECTED_SOP_INSTANCE, instance_uid),
        )
        buffers: list[bytes | memoryview] = []
        ul.frame(buffers, 1, command, fragment, command=True, ends=True)
        if dataset:
            ul.frame(buffers, 1, dataset, fragment, command=False, ends=True)
        self.send(b"".join(buffers))

    def status(self) -> int:
        answer = self.pdu()
        assert answer is not None and answer[0] == ul.PDU_DATA, answer
        ((_, control, fragment),) = list(ul.pdv_items(memoryview(answer[1])))
        assert control == ul.CONTROL_COMMAND | ul.CONTROL_LAST
        response = ul.parse_command(bytes(fragment))
        assert response.field == ul.C_STORE_RSP and response.responded_to == 7
        self.last_response = response
        assert response.status is not None
        return response.status

    def release(self) -> None:
        self.send(ul.release_request())
        answer = self.pdu()
        assert answer is not None and answer[0] == ul.PDU_RELEASE_RP, answer

    def closed(self, seconds: float) -> bool:
        """True when the listener closes the connection within ``seconds``."""
        self.sock.settimeout(seconds)
        try:
            while self.sock.recv(65536):
                pass
        except TimeoutError:
            return False
        except OSError:
            pass
        return True

    def close(self) -> None:
        self.sock.close()


def _rejection(answer: tuple[int, bytes] | None) -> tuple[int, int, int]:
    assert answer is not None, "closed without an A-ASSOCIATE-RJ"
    assert answer[0] == ul.PDU_ASSOCIATE_RJ, answer
    return ul.fixed_fields(answer[1], answer[0])


# --- protocol correctness -----------------------------------------------------------------------
@pytest.mark.parametrize("version", [0, 2])
def test_a_protocol_version_without_bit_0_is_rejected(listen, version):
    scp = listen()
    peer = Peer(scp.port)
    peer.send(request_pdu(version=version))
    assert _rejection(peer.pdu()) == (
        acse.REJECT_PERMANENT,
        acse.SOURCE_PROVIDER_ACSE,
        acse.ACSE_PROTOCOL_VERSION_NOT_SUPPORTED,
    )


def test_version_bits_beyond_bit_0_are_not_tested(listen):
    """PS3.8 9.3.2: a receiver implementing only version 1 tests only bit 0."""
    scp = listen()
    assert Peer(scp.port).associate(version=3).results[0].result == acse.RESULT_ACCEPTANCE


@pytest.mark.parametrize(
    ("where", "request_fields", "expect"),
    [
        ("application context", {"context": "1.2.840.10008.3.1.1.é".encode()}, "reject"),
        ("abstract syntax", {"abstract": "1.2.840.10008.5.1.4.1.1.é".encode()}, 3),
        ("transfer syntax", {"transfers": ("1.2.840.10008.1.2.é".encode(),)}, 4),
        ("one of two transfer syntaxes", {"transfers": (b"\xff\xfe", EXPLICIT.encode())}, 0),
        ("implementation class UID", {"implementation": "2.25.ü".encode()}, 0),
    ],
)
def test_a_non_ascii_uid_in_the_request_gets_a_dicom_answer(listen, where, request_fields, expect):
    scp = listen()
    peer = Peer(scp.port)
    peer.send(request_pdu(**request_fields))
    answer = peer.pdu()
    assert answer is not None, f"non-ASCII {where}: closed without an answer"
    if expect == "reject":
        assert _rejection(answer) == (
            acse.REJECT_PERMANENT,
            acse.SOURCE_SERVICE_USER,
            acse.USER_CONTEXT_NAME_NOT_SUPPORTED,
        )
        return
    assert answer[0] == ul.PDU_ASSOCIATE_AC
    (result,) = acse.read_acceptance(answer[1]).results
    assert result.result == expect
    assert result.transfer_syntax.isascii()
    peer.release()


def test_a_non_ascii_instance_uid_gets_a_status_and_the_association_goes_on(listen):
    handler = Recorder()
    scp = listen(handler)
    peer = Peer(scp.port)
    peer.associate()
    uid = "1.2.3.é".encode()
    assert peer.store(uid, b"\x08\x00\x18\x00") == CANNOT_UNDERSTAND
    assert peer.last_response.sop_instance_raw == uid  # echoed as sent
    sop_class = (MR + ".ü").encode()
    assert peer.store(b"1.2.3.4", b"\x08\x00\x18\x00", sop_class=sop_class) == 0x0122
    assert peer.last_response.sop_class_raw == sop_class
    assert peer.store(b"1.2.3.4", b"\x08\x00\x18\x00") == SUCCESS
    peer.release()
    assert [a.sop_instance_uid for a in handler.arrivals] == ["1.2.3.4"]


def test_a_malformed_request_is_aborted(listen):
    scp = listen()
    peer = Peer(scp.port)
    peer.send(struct.pack(">BBI", 1, 0, 10) + bytes(10))  # shorter than the fixed fields
    answer = peer.pdu()
    assert answer is not None and answer[0] == ul.PDU_ABORT


# --- the dataset size limit ---------------------------------------------------------------------
def test_a_dataset_over_the_limit_is_refused_without_being_held(listen):
    """16 MiB sent in 64 KiB PDUs against a 1 MiB limit: 0xA700 once the last fragment is in,
    the handler never sees it, and the listener held about the limit, not the dataset (before:
    every fragment kept, then joined, twice the dataset)."""
    handler = Recorder()
    limit = 2**20
    scp = listen(handler, max_dataset_bytes=limit)
    peer = Peer(scp.port)
    peer.associate()
    chunk = bytes(65536 - ul.PDV_OVERHEAD)
    command = ul.command_set(
        ul.element(ul.TAG_AFFECTED_SOP_CLASS, MR.encode()),
        ul.element(ul.TAG_COMMAND_FIELD, ul.us(ul.C_STORE_RQ)),
        ul.element(ul.TAG_MESSAGE_ID, ul.us(7)),
        ul.element(ul.TAG_DATASET_TYPE, ul.us(ul.DATASET_PRESENT)),
        ul.element(ul.TAG_AFFECTED_SOP_INSTANCE, b"1.2.3.5"),
    )
    pieces = 16 * 2**20 // len(chunk)
    tracemalloc.start()
    try:
        peer.send(ul.pdv_header(1, ul.CONTROL_COMMAND | ul.CONTROL_LAST, len(command)) + command)
        for index in range(pieces):
            last = ul.CONTROL_LAST if index == pieces - 1 else 0
            peer.send(ul.pdv_header(1, last, len(chunk)))
            peer.send(chunk)
        assert peer.status() == OUT_OF_RESOURCES
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < limit + 2 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    assert handler.arrivals == []
    assert peer.store(b"1.2.3.6", bytes(limit)) == SUCCESS  # at the limit: kept
    peer.release()
    assert [a.sop_instance_uid for a in handler.arrivals] == ["1.2.3.6"]
    assert len(handler.arrivals[0].data) > limit


def test_a_dataset_in_one_pdu_over_the_limit_is_refused(listen):
    handler = Recorder()
    scp = listen(handler, max_dataset_bytes=1000)
    peer = Peer(scp.port)
    peer.associate()
    assert peer.store(b"1.2.3.7", bytes(100_000), fragment=200_000) == OUT_OF_RESOURCES
    peer.release()
    assert handler.arrivals == []


# --- deadlines ----------------------------------------------------------------------------------
def test_a_pdu_dripped_slower_than_its_deadline_is_aborted(listen):
    """Before, the timeout applied to each read: one byte every 0.3 s held the slot forever."""
    scp = listen(network_timeout_seconds=1.0)
    peer = Peer(scp.port)
    peer.associate()
    started = time.monotonic()
    peer.send(ul.pdv_header(1, ul.CONTROL_COMMAND | ul.CONTROL_LAST, 200)[:6])
    answer = None
    for _ in range(20):
        try:
            peer.send(b"\x00")
        except OSError:
            break
        peer.sock.settimeout(0.3)
        try:
            data = peer.sock.recv(10)
        except TimeoutError:
            continue
        answer = data
        break
    assert time.monotonic() - started < 2.5
    assert answer is not None and answer[:1] == bytes((ul.PDU_ABORT,))
    assert scp.slots.total(1) == 0  # the association's slot is back


def test_an_association_request_must_arrive_within_its_deadline(listen):
    scp = listen(association_request_timeout_seconds=1.0)
    peer = Peer(scp.port)
    started = time.monotonic()
    request = request_pdu()
    closed = False
    for byte in request[:20]:
        try:
            peer.send(bytes((byte,)))
        except OSError:
            closed = True
            break
        if peer.closed(0.3):
            closed = True
            break
    assert closed and time.monotonic() - started < 2.5
    assert scp.slots.total(0) == 0


# --- slots and threads --------------------------------------------------------------------------
def test_refused_addresses_take_no_association_slot(listen, caplog):
    """Before, every connection took a slot before its request was read: 16 idle connections
    from a refused address locked the scanner out, and nothing was logged."""
    handler = Recorder(access=AccessPolicy(NODE, source_networks=["127.0.0.1/32"]))
    scp = listen(handler, max_associations=1)
    caplog.set_level(logging.INFO, logger="dicomnode.net.scp")
    intruders = []
    for _ in range(4):
        intruder = Peer(scp.port, source="127.0.0.2")
        intruder.send(request_pdu())
        assert _rejection(intruder.pdu()) == (1, 1, 1)
        intruders.append(intruder)  # stays open after its rejection
    scanner = Peer(scp.port)
    scanner.associate()
    assert scanner.store(b"1.2.3.8", b"\x08\x00\x18\x00") == SUCCESS
    scanner.release()
    refusals = [r for r in caplog.records if "source address not allowed" in r.getMessage()]
    assert len(refusals) == 4
    assert all(r.levelno == logging.WARNING and r.peer == "127.0.0.2" for r in refusals)
    for intruder in intruders:
        intruder.close()


def test_a_full_node_rejects_transiently_with_local_limit_exceeded(listen):
    scp = listen(max_associations=1)
    first = Peer(scp.port)
    first.associate()
    second = Peer(scp.port)
    second.send(request_pdu())
    assert _rejection(second.pdu()) == (
        acse.REJECT_TRANSIENT,
        acse.SOURCE_PROVIDER_PRESENTATION,
        acse.PRESENTATION_LOCAL_LIMIT_EXCEEDED,
    )
    first.release()


def test_pending_connections_are_bounded_and_hold_no_thread_beyond_the_bound(listen, caplog):
    caplog.set_level(logging.WARNING, logger="dicomnode.net.scp")
    threads_before = threading.active_count()
    scp = listen(max_pending_connections=4, association_request_timeout_seconds=30.0)
    idle = [Peer(scp.port) for _ in range(4)]
    deadline = time.monotonic() + 5
    while scp.connections() < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert scp.connections() == 4
    extra = [Peer(scp.port) for _ in range(20)]
    assert all(peer.closed(2.0) for peer in extra)  # closed at once, no thread started
    assert scp.connections() == 4
    assert threading.active_count() <= threads_before + 1 + 4  # the accept loop, 4 pending
    assert any(
        "too many connections awaiting association" in r.getMessage() for r in caplog.records
    )
    for peer in idle:
        peer.close()
    deadline = time.monotonic() + 5
    while scp.slots.total(0) and time.monotonic() < deadline:
        time.sleep(0.02)
    scanner = Peer(scp.port)
    scanner.associate()
    scanner.release()


def test_the_slot_is_free_before_the_post_release_work_ends(listen):
    """Before, the slot stayed busy through series completion after the release."""
    handler = Recorder(hold_end=threading.Event())
    scp = listen(handler, max_associations=1)
    first = Peer(scp.port)
    first.associate()
    first.release()  # association_ended now blocks in the listener's thread
    second = Peer(scp.port)
    second.associate()
    assert handler.ended == []
    handler.hold_end.set()
    second.release()
    deadline = time.monotonic() + 5
    while len(handler.ended) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [released for _, released in handler.ended] == [True, True]


def test_an_aborted_association_gives_its_slot_back_and_is_reported(listen):
    handler = Recorder()
    scp = listen(handler, max_associations=1)
    first = Peer(scp.port)
    first.associate()
    first.send(ul.abort(ul.ABORT_SOURCE_USER, 0))
    first.close()
    deadline = time.monotonic() + 5
    while not handler.ended and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [released for _, released in handler.ended] == [False]
    second = Peer(scp.port)
    second.associate()
    second.release()


def test_a_tls_handshake_must_finish_within_the_request_deadline(listen, pki):
    from dicomnode.net.tls import server_context

    context = server_context(pki / "node.pem", pki / "node.key")
    scp = listen(ssl_context=context, association_request_timeout_seconds=1.0)
    peer = Peer(scp.port)
    started = time.monotonic()
    peer.send(b"\x16\x03\x01")  # the start of a ClientHello, and then nothing
    assert peer.closed(4.0)
    assert time.monotonic() - started < 2.5
