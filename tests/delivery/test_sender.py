"""The C-STORE sender against real receivers: dcmtk's storescp (plain, aborting, stalling), a
pynetdicom SCP that aborts on one chosen instance, and our own node over TLS with client
certificates."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pynetdicom import AE, AllStoragePresentationContexts, evt

from dicomnode.config import Destination, TLSSettings
from dicomnode.deliver.sender import (
    FAILURE,
    SUCCESS,
    UNSENT,
    AssociationFailed,
    Result,
    Sender,
)
from tests.conftest import free_port, require_tool
from tests.delivery.helpers import items_of
from tests.node.helpers import RunningNode
from tests.node.series_files import write_lowfield_series
from tests.pki import node_tls_section

JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


@dataclass
class Storescp:
    port: int
    folder: Path
    process: subprocess.Popen

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file())


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator:  # type: ignore[type-arg]
    """Start dcmtk's storescp with extra options; it accepts uncompressed syntaxes only."""
    require_tool("storescp")
    started: list[Storescp] = []

    def start(*options: str) -> Storescp:
        folder = tmp_path / f"storescp{len(started)}"
        folder.mkdir()
        port = free_port()
        process = subprocess.Popen(
            ["storescp", "-aet", "STORESCP", "-od", str(folder), *options, str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        scp = Storescp(port, folder, process)
        started.append(scp)
        _wait_listening(port)
        return scp

    yield start
    for scp in started:
        scp.process.kill()
        scp.process.wait()


def _wait_listening(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


def _send(destination: Destination, files: list[Path], dimse_timeout: float = 30) -> list[Result]:
    results: list[Result] = []
    sender = Sender("IQTNODE", destination, connect_timeout=5, dimse_timeout=dimse_timeout)
    sender.send(items_of(files), results.append)
    return results


def _destination(port: int, ae_title: str = "STORESCP", tls: TLSSettings | None = None):  # type: ignore[no-untyped-def]
    return Destination(name="d", ae_title=ae_title, host="127.0.0.1", port=port, tls=tls)


def test_refused_stored_syntax_is_sent_as_explicit_le_with_identical_pixels(
    tmp_path, brain, storescp
):
    require_tool("dcmcjpls")
    files = write_lowfield_series(brain, tmp_path / "s", seed=61, rows=64)[:3]
    compressed = tmp_path / "jls.dcm"
    subprocess.run(["dcmcjpls", "+el", str(files[0]), str(compressed)], check=True)
    assert pydicom.dcmread(compressed).file_meta.TransferSyntaxUID == JPEG_LS_LOSSLESS
    scp = storescp()  # default: uncompressed transfer syntaxes only

    results = _send(_destination(scp.port), [compressed, *files[1:]])

    assert [r.outcome for r in results] == [SUCCESS] * 3, results
    assert [r.converted for r in results] == [True, False, False]
    received = {str(pydicom.dcmread(p).SOPInstanceUID): p for p in scp.files()}
    assert len(received) == 3
    original = pydicom.dcmread(files[0])
    arrived = pydicom.dcmread(received[str(original.SOPInstanceUID)])
    assert arrived.file_meta.TransferSyntaxUID in (EXPLICIT_LE, "1.2.840.10008.1.2")
    assert np.array_equal(arrived.pixel_array, original.pixel_array)
    for path in files[1:]:  # sent as stored: the dataset bytes are the file's own
        sent = pydicom.dcmread(path)
        got = pydicom.dcmread(received[str(sent.SOPInstanceUID)])
        assert got.PixelData == sent.PixelData


def test_files_streamed_from_disk_arrive_byte_identical(tmp_path, brain, storescp, monkeypatch):
    """Files above the whole-read size go to the socket in chunks of PDUs read from disk."""
    monkeypatch.setattr("dicomnode.net.scu.WHOLE_READ_BYTES", 0)
    monkeypatch.setattr("dicomnode.net.scu.READ_CHUNK_PDUS", 1)
    files = write_lowfield_series(brain, tmp_path / "s", seed=65, rows=128)[:2]
    scp = storescp("--max-pdu", "4096")  # 32 KiB of pixels in 4 KiB PDUs, one per read

    results = _send(_destination(scp.port), files)

    assert [r.outcome for r in results] == [SUCCESS] * 2, results
    received = {str(pydicom.dcmread(p).SOPInstanceUID): p for p in scp.files()}
    for path in files:
        sent = pydicom.dcmread(path)
        assert pydicom.dcmread(received[str(sent.SOPInstanceUID)]).PixelData == sent.PixelData


def test_abort_after_a_request_fails_it_alone_and_the_rest_stay_unsent(tmp_path, brain, storescp):
    files = write_lowfield_series(brain, tmp_path / "s", seed=62, rows=64)[:3]
    scp = storescp("--abort-after")

    start = time.monotonic()
    results = _send(_destination(scp.port), files)

    assert time.monotonic() - start < 10
    assert [r.outcome for r in results] == [FAILURE, UNSENT, UNSENT]
    assert "no response" in (results[0].error or "")
    assert all(r.error == "association lost" for r in results[1:])


def test_an_abort_on_one_instance_mid_batch_fails_that_instance_only(tmp_path, brain):
    """The peer takes two instances, aborts on the third: the third is the failure, the two
    after it were never on the wire (the outbox sends them again without counting an attempt)."""
    files = write_lowfield_series(brain, tmp_path / "s", seed=67, rows=64)[:5]
    chosen = str(pydicom.dcmread(files[2], stop_before_pixels=True).SOPInstanceUID)
    seen: list[str] = []

    def on_store(event):  # type: ignore[no-untyped-def]
        uid = str(event.request.AffectedSOPInstanceUID)
        seen.append(uid)
        if uid == chosen:
            event.assoc.abort()
        return 0x0000

    ae = AE(ae_title="PACS")
    ae.supported_contexts = AllStoragePresentationContexts
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    try:
        results = _send(_destination(port, "PACS"), files, dimse_timeout=10)
    finally:
        server.shutdown()

    assert [r.outcome for r in results] == [SUCCESS, SUCCESS, FAILURE, UNSENT, UNSENT], results
    assert "aborted" in (results[2].error or "")
    assert len(seen) == 3 and seen[-1] == chosen


def test_no_response_within_the_dimse_timeout_fails_the_instance(tmp_path, brain, storescp):
    files = write_lowfield_series(brain, tmp_path / "s", seed=63, rows=64)[:2]
    scp = storescp("--sleep-during", "5")

    start = time.monotonic()
    results = _send(_destination(scp.port), files, dimse_timeout=1)

    assert time.monotonic() - start < 4.5
    assert results[0].outcome == FAILURE and "timed out" in (results[0].error or "")
    assert results[1].outcome == UNSENT and results[1].error == "association lost"


def test_nobody_listening_raises_association_failed(tmp_path, brain):
    files = write_lowfield_series(brain, tmp_path / "s", seed=64, rows=64)[:1]
    with pytest.raises(AssociationFailed, match="cannot connect"):
        _send(_destination(free_port()), files)


def test_rejection_names_the_reason(tmp_path, brain):
    files = write_lowfield_series(brain, tmp_path / "s", seed=65, rows=64)[:1]
    node = RunningNode(
        tmp_path / "node", free_port(), accept='calling_ae_titles = ["SCANNER"]'
    ).start()
    try:
        refused = "rejected by IQTNODE.*Calling AE title not recognised"
        with pytest.raises(AssociationFailed, match=refused):
            _send(_destination(node.port, "IQTNODE"), files)
    finally:
        node.stop()


def test_tls_destination_with_client_certificate(tmp_path, brain, pki):
    files = write_lowfield_series(brain, tmp_path / "s", seed=66, rows=64)[:2]
    node_tls = node_tls_section(pki)
    node = RunningNode(tmp_path / "node", free_port(), node_extra=node_tls).start()
    try:
        trusted = TLSSettings(
            certificate=pki / "scanner.pem",
            private_key=pki / "scanner.key",
            ca_certificates=pki / "hospital-ca.pem",
        )
        results = _send(_destination(node.port, "IQTNODE", trusted), files)
        assert [r.outcome for r in results] == [SUCCESS, SUCCESS]
        node.wait_for(lambda: node.series() and node.series()[0]["instances"] == 2)

        stranger = TLSSettings(
            certificate=pki / "stranger.pem",
            private_key=pki / "stranger.key",
            ca_certificates=pki / "hospital-ca.pem",
        )
        with pytest.raises(AssociationFailed):
            _send(_destination(node.port, "IQTNODE", stranger), files)
        with pytest.raises(AssociationFailed):  # plain TCP to a TLS port
            _send(_destination(node.port, "IQTNODE"), files)
    finally:
        node.stop()
