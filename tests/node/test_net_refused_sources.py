"""Connections from refused source networks cannot lock allowed peers out.

The source address is known at TCP accept, long before the A-ASSOCIATE-RQ. Before, every
connection took one of the ``max_pending_connections`` slots at accept and the source-network
check ran only once the request was read, so idle connections from a refused network filled the
pending budget and the scanner was closed at accept. Now the handler is asked at accept
(``address_allowed``): a refused address is served from a small budget of its own (an
A-ASSOCIATE-RJ within it, closed at once beyond it) and never takes a pending slot.
In-process listener on 127.0.0.1, peers from 127.0.0.1 (allowed) and 127.0.0.2 (refused).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

from dicomnode.logs import JsonFormatter
from dicomnode.net import acse
from dicomnode.net.handler import SUCCESS, AccessPolicy
from dicomnode.net.limits import MAX_REFUSED_CONNECTIONS, PENDING, REFUSED
from tests.node.test_net_listener import (
    NODE,
    Peer,
    Recorder,
    request_pdu,
)

ALLOWED = "127.0.0.1"
REFUSED_ADDRESS = "127.0.0.2"


@dataclass
class Screening(Recorder):
    """The recorder, plus the accept-time question the node's IntakeHandler answers."""

    asked: list[str] | None = None

    def address_allowed(self, peer: str) -> bool:
        if self.asked is not None:
            self.asked.append(peer)
        return self.access.address_allowed(peer)


def _screening() -> Screening:
    return Screening(access=AccessPolicy(NODE, source_networks=[f"{ALLOWED}/32"]), asked=[])


def _wait(predicate, seconds: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)


def test_idle_connections_from_a_refused_network_leave_the_pending_slots_free(listen, caplog):
    """Ten idle connections from a refused network against four pending slots: the scanner
    still associates and stores. Before, the first four took every pending slot."""
    caplog.set_level(logging.INFO, logger="dicomnode.net.scp")
    handler = _screening()
    scp = listen(handler, max_pending_connections=4, association_request_timeout_seconds=30.0)
    intruders = [Peer(scp.port, source=REFUSED_ADDRESS) for _ in range(10)]
    _wait(lambda: len(handler.asked or []) >= 10)
    _wait(lambda: scp.connections() >= MAX_REFUSED_CONNECTIONS)
    assert scp.slots.total(PENDING) == 0
    assert scp.slots.total(REFUSED) == MAX_REFUSED_CONNECTIONS

    scanner = Peer(scp.port, source=ALLOWED)
    scanner.associate()
    assert scanner.store(b"1.2.3.20", b"\x08\x00\x18\x00") == SUCCESS
    scanner.release()
    assert [a.sop_instance_uid for a in handler.arrivals] == ["1.2.3.20"]

    # beyond the refused budget: closed at once, nothing read or sent
    closed = [peer for peer in intruders if peer.closed(0.5)]
    assert len(closed) == 10 - MAX_REFUSED_CONNECTIONS
    lines = [r for r in caplog.records if "from refused addresses" in r.getMessage()]
    assert lines and lines[0].levelno == logging.WARNING
    payload = json.loads(JsonFormatter().format(lines[0]))
    assert payload["peer"] == REFUSED_ADDRESS
    assert payload["max_refused_connections"] == MAX_REFUSED_CONNECTIONS
    assert set(payload) <= {"ts", "level", "logger", "msg", "peer", "refused"} | {
        "max_refused_connections"
    }
    for peer in intruders:
        peer.close()


def test_within_the_refused_budget_the_peer_gets_its_rejection(listen, caplog):
    caplog.set_level(logging.INFO, logger="dicomnode.net.scp")
    handler = _screening()
    scp = listen(handler, max_pending_connections=2, association_request_timeout_seconds=30.0)
    for _ in range(3):  # more than there are pending slots: each gets its answer in turn
        intruder = Peer(scp.port, source=REFUSED_ADDRESS)
        intruder.send(request_pdu())
        answer = intruder.pdu()
        assert answer is not None and answer[0] == 0x03, answer  # A-ASSOCIATE-RJ
        assert tuple(answer[1][1:4]) == (
            acse.REJECT_PERMANENT,
            acse.SOURCE_SERVICE_USER,
            acse.USER_NO_REASON,
        )
        intruder.close()
    assert scp.slots.total(PENDING) == 0
    _wait(lambda: scp.slots.total(REFUSED) == 0)
    assert scp.slots.total(REFUSED) == 0  # given back after each rejection
    refusals = [r for r in caplog.records if "source address not allowed" in r.getMessage()]
    assert len(refusals) == 3 and all(r.peer == REFUSED_ADDRESS for r in refusals)


def test_the_refused_budget_is_its_own(listen):
    """A full refused budget does not close allowed peers, and full pending slots do not close
    refused ones early: each kind is counted apart."""
    handler = _screening()
    scp = listen(
        handler,
        max_pending_connections=1,
        max_refused_connections=1,
        association_request_timeout_seconds=30.0,
    )
    intruder = Peer(scp.port, source=REFUSED_ADDRESS)
    _wait(lambda: scp.slots.total(REFUSED) == 1)
    idle = Peer(scp.port, source=ALLOWED)  # takes the one pending slot
    _wait(lambda: scp.slots.total(PENDING) == 1)
    assert Peer(scp.port, source=REFUSED_ADDRESS).closed(2.0)
    assert Peer(scp.port, source=ALLOWED).closed(2.0)
    assert not intruder.closed(0.2) and not idle.closed(0.2)
    idle.close()
    _wait(lambda: scp.slots.total(PENDING) == 0)
    scanner = Peer(scp.port, source=ALLOWED)
    scanner.associate()
    scanner.release()
    intruder.close()


def test_a_handler_without_the_question_allows_every_address(listen):
    """``address_allowed`` is optional: without it the RQ-time check alone decides, as before."""
    handler = Recorder(access=AccessPolicy(NODE, source_networks=[f"{ALLOWED}/32"]))
    scp = listen(handler, max_pending_connections=2, association_request_timeout_seconds=30.0)
    intruder = Peer(scp.port, source=REFUSED_ADDRESS)
    _wait(lambda: scp.slots.total(PENDING) == 1)
    assert scp.slots.total(REFUSED) == 0
    intruder.send(request_pdu())
    answer = intruder.pdu()
    assert answer is not None and answer[0] == 0x03
    intruder.close()
