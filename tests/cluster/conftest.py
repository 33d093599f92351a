"""Fixtures of the cluster tests: RabbitMQ (reachable, or a clear failure), a queue of the
test's own, a shared data_dir and the PACS."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.cluster.helpers import BROKER_URL
from tests.conftest import require_tool
from tests.delivery.orthanc import ORTHANC, Orthanc


@pytest.fixture(scope="session")
def rabbitmq() -> str:
    """The broker's URL; RabbitMQ must answer there (scripts/test.sh starts or installs it)."""
    parsed = urlparse(BROKER_URL)
    try:
        with socket.create_connection((parsed.hostname, parsed.port or 5672), timeout=3):
            pass
    except OSError as exc:
        pytest.fail(
            f"RabbitMQ is not reachable at {parsed.hostname}:{parsed.port or 5672} ({exc}); "
            "scripts/test.sh starts it (or installs Debian's rabbitmq-server), or set "
            "DICOMNODE_TEST_BROKER to an amqp:// URL"
        )
    return BROKER_URL


@pytest.fixture
def queue_name(rabbitmq: str) -> Iterator[str]:
    """A queue of this test's own, deleted afterwards."""
    from kombu import Connection

    name = f"dicomnode-test-{uuid.uuid4().hex[:10]}"
    yield name
    try:
        with Connection(rabbitmq, connect_timeout=3) as connection:
            connection.default_channel.queue_delete(name)
            connection.default_channel.exchange_delete(name)
    except Exception:  # noqa: BLE001 - a leftover queue is harmless
        pass


@pytest.fixture
def shared_data(tmp_path: Path) -> Path:
    """The data_dir every node of the test shares (an NFS path on real machines)."""
    folder = tmp_path / "shared-data"
    folder.mkdir()
    return folder


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[Orthanc]:
    require_tool(ORTHANC)
    require_tool("storescu")
    server = Orthanc(tmp_path / "orthanc").start()
    yield server
    server.stop()
