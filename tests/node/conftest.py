"""Fixtures shared by the listener tests (test_net_*.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture
def listen() -> Iterator:  # type: ignore[type-arg]
    """``listen(handler=None, **settings)`` starts an in-process listener on a free loopback
    port (5 s deadlines unless overridden); every one started is stopped afterwards."""
    from dicomnode.net.scp import ListenerSettings, StoreSCP
    from tests.node.test_net_listener import NODE, Recorder

    started: list[StoreSCP] = []

    def start(handler: Recorder | None = None, **settings: object) -> StoreSCP:
        options: dict[str, object] = {
            "bind_address": "127.0.0.1",
            "port": 0,
            "network_timeout_seconds": 5.0,
            "association_request_timeout_seconds": 5.0,
            **settings,
        }
        scp = StoreSCP(ListenerSettings(NODE, **options), handler or Recorder())  # type: ignore[arg-type]
        scp.start()
        started.append(scp)
        return scp

    yield start
    for scp in started:
        scp.stop()
