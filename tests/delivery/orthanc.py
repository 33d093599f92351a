"""Orthanc (Debian package) as the PACS under test: free loopback ports, its own storage folder.

The harness lives in ``dicomnode.pacs`` (the demo and the benchmarks use it too); this module
keeps the names the tests import. Orthanc listens on every interface (it has no bind option);
tests only ever send to 127.0.0.1. ``TCP_NODELAY=1`` is in its environment, as DESIGN.md
measured (20/s without it).
"""

from __future__ import annotations

from dataclasses import dataclass

from dicomnode import pacs
from dicomnode.pacs import ORTHANC, OrthancError, free_port

__all__ = ["ORTHANC", "Orthanc", "OrthancError", "free_port"]


@dataclass
class Orthanc(pacs.Orthanc):
    """``dicomnode.pacs.Orthanc`` named as the tests' PACS (what its logs and REST show)."""

    name: str = "test-pacs"
