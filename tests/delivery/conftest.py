"""Fixtures for delivery tests: Orthanc as the PACS, a node whose rules forward to it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_tool
from tests.delivery.orthanc import ORTHANC, Orthanc


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    require_tool(ORTHANC)
    pacs = Orthanc(tmp_path / "orthanc").start()
    yield pacs
    pacs.stop()
