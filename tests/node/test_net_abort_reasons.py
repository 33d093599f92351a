"""The listener's A-ABORTs name what was wrong (PS3.8 9.3.8 reasons), and the maximum PDU length
it advertises (``[node] max_pdu_size``) is enforced on every P-DATA-TF that comes in.

Before, every protocol error was aborted with reason 6 (invalid PDU parameter value), and a
P-DATA-TF longer than the advertised maximum was read and served as if nothing were wrong.
Raw peers on 127.0.0.1, and dcmtk's storescu as a peer that keeps to the negotiated length.
"""

from __future__ import annotations

import io
import struct
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import generate_uid

from dicomnode.net import acse, ul
from dicomnode.net.handler import SUCCESS
from tests.conftest import require_tool
from tests.node.test_net_listener import (
    MR,
    NODE,
    Peer,
    Recorder,
    request_pdu,
)

PROVIDER = ul.ABORT_SOURCE_PROVIDER


def _pdu(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBI", kind, 0, len(body)) + body


def _pdv(context_id: int, control: int, data: bytes) -> bytes:
    return struct.pack(">IBB", len(data) + 2, context_id, control) + data


def _command(dataset: bool = True) -> bytes:
    return ul.command_set(
        ul.element(ul.TAG_AFFECTED_SOP_CLASS, MR.encode()),
        ul.element(ul.TAG_COMMAND_FIELD, ul.us(ul.C_STORE_RQ)),
        ul.element(ul.TAG_MESSAGE_ID, ul.us(7)),
        ul.element(ul.TAG_DATASET_TYPE, ul.us(ul.DATASET_PRESENT if dataset else ul.NO_DATASET)),
        ul.element(ul.TAG_AFFECTED_SOP_INSTANCE, b"1.2.3.9"),
    )


def _abort(answer: tuple[int, bytes] | None) -> tuple[int, int]:
    assert answer is not None, "closed without an A-ABORT"
    assert answer[0] == ul.PDU_ABORT, answer
    _, source, reason = ul.fixed_fields(answer[1], answer[0])
    return source, reason


COMMAND_LAST = ul.CONTROL_COMMAND | ul.CONTROL_LAST
BEFORE = {
    # the first PDU of a connection must be an A-ASSOCIATE-RQ
    "a PDU type PS3.8 does not define": (_pdu(0x0A, bytes(4)), ul.ABORT_UNRECOGNIZED_PDU),
    "an A-ASSOCIATE-AC": (_pdu(ul.PDU_ASSOCIATE_AC, bytes(68)), ul.ABORT_UNEXPECTED_PDU),
    "a P-DATA-TF": (
        _pdu(ul.PDU_DATA, _pdv(1, COMMAND_LAST, _command(False))),
        ul.ABORT_UNEXPECTED_PDU,
    ),
    "an A-RELEASE-RQ": (ul.release_request(), ul.ABORT_UNEXPECTED_PDU),
    "an A-ASSOCIATE-RQ shorter than its fixed fields": (
        _pdu(ul.PDU_ASSOCIATE_RQ, bytes(10)),
        ul.ABORT_INVALID_PARAMETER,
    ),
}
AFTER = {
    "a PDU type PS3.8 does not define": (_pdu(0x55, bytes(4)), ul.ABORT_UNRECOGNIZED_PDU),
    "a second A-ASSOCIATE-RQ": (request_pdu(), ul.ABORT_UNEXPECTED_PDU),
    "an A-ASSOCIATE-AC": (_pdu(ul.PDU_ASSOCIATE_AC, bytes(68)), ul.ABORT_UNEXPECTED_PDU),
    "an A-ASSOCIATE-RJ": (ul.associate_reject(1, 1, 1), ul.ABORT_UNEXPECTED_PDU),
    "an A-RELEASE-RP": (ul.release_response(), ul.ABORT_UNEXPECTED_PDU),
    "a dataset fragment without its command": (
        _pdu(ul.PDU_DATA, _pdv(1, ul.CONTROL_LAST, b"\x08\x00\x18\x00")),
        ul.ABORT_UNEXPECTED_PARAMETER,
    ),
    "a command fragment where the dataset belongs": (
        _pdu(ul.PDU_DATA, _pdv(1, COMMAND_LAST, _command()) + _pdv(1, COMMAND_LAST, _command())),
        ul.ABORT_UNEXPECTED_PARAMETER,
    ),
    "a PDV on a context that was not accepted": (
        _pdu(ul.PDU_DATA, _pdv(3, COMMAND_LAST, _command(False))),
        ul.ABORT_INVALID_PARAMETER,
    ),
    "a PDV item length below 2": (
        _pdu(ul.PDU_DATA, struct.pack(">IBB", 1, 1, 3)),
        ul.ABORT_INVALID_PARAMETER,
    ),
    "an A-RELEASE-RQ over 1 MiB": (
        struct.pack(">BBI", ul.PDU_RELEASE_RQ, 0, 2 << 20),
        ul.ABORT_INVALID_PARAMETER,
    ),
}


@pytest.mark.parametrize("what", list(BEFORE))
def test_before_association_the_abort_names_the_reason(listen, what):
    data, reason = BEFORE[what]
    scp = listen()
    peer = Peer(scp.port)
    peer.send(data)
    assert _abort(peer.pdu()) == (PROVIDER, reason)
    peer.close()


@pytest.mark.parametrize("what", list(AFTER))
def test_after_association_the_abort_names_the_reason(listen, what):
    data, reason = AFTER[what]
    handler = Recorder()
    scp = listen(handler)
    peer = Peer(scp.port)
    peer.associate()
    peer.send(data)
    assert _abort(peer.pdu()) == (PROVIDER, reason)
    peer.close()
    assert handler.arrivals == []
    assert [released for _, released in _ended(handler)] == [False]


def test_an_a_abort_instead_of_the_request_is_not_answered(listen):
    """PS3.8 AA-2: an A-ABORT is never answered with another; the connection is closed."""
    scp = listen()
    peer = Peer(scp.port)
    peer.send(ul.abort(ul.ABORT_SOURCE_USER, 0))
    assert peer.pdu() is None
    deadline = time.monotonic() + 5
    while scp.slots.total(0) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert scp.slots.total(0) == 0


def _ended(handler: Recorder) -> list:  # type: ignore[type-arg]
    deadline = time.monotonic() + 5
    while not handler.ended and time.monotonic() < deadline:
        time.sleep(0.02)
    return handler.ended


# --- the negotiated maximum PDU length ------------------------------------------------------------
MAXIMUM = 16384


def test_a_p_data_tf_longer_than_advertised_is_aborted_before_it_is_read(listen):
    """Only the header of a 16385-byte P-DATA-TF is sent: the abort comes at once, without
    waiting for (or reading) the body."""
    handler = Recorder()
    scp = listen(handler, max_pdu_size=MAXIMUM, network_timeout_seconds=30.0)
    peer = Peer(scp.port)
    assert peer.associate().maximum_length == MAXIMUM
    started = time.monotonic()
    peer.send(struct.pack(">BBI", ul.PDU_DATA, 0, MAXIMUM + 1))
    assert _abort(peer.pdu(seconds=5)) == (PROVIDER, ul.ABORT_INVALID_PARAMETER)
    assert time.monotonic() - started < 3
    assert handler.arrivals == []


def test_p_data_tf_up_to_the_advertised_length_are_served(listen):
    handler = Recorder()
    scp = listen(handler, max_pdu_size=MAXIMUM)
    peer = Peer(scp.port)
    peer.associate()
    fragment = MAXIMUM - ul.PDV_OVERHEAD  # PDUs of exactly MAXIMUM bytes
    assert peer.store(b"1.2.3.10", bytes(5 * fragment), fragment=fragment) == SUCCESS
    peer.send_store(b"1.2.3.11", bytes(5 * fragment), fragment=fragment + 1)
    assert _abort(peer.pdu()) == (PROVIDER, ul.ABORT_INVALID_PARAMETER)
    assert [a.sop_instance_uid for a in handler.arrivals] == ["1.2.3.10"]


def test_without_a_maximum_long_p_data_tf_are_still_served(listen):
    """max_pdu_size 0 (no limit): as before, bounded only by the dataset limit."""
    handler = Recorder()
    scp = listen(handler)
    peer = Peer(scp.port)
    assert peer.associate().maximum_length == 0
    assert peer.store(b"1.2.3.12", bytes(2**20), fragment=2**20) == SUCCESS
    peer.release()
    assert [a.sop_instance_uid for a in handler.arrivals] == ["1.2.3.12"]


def _part10(folder: Path, pixels: int) -> Path:
    ds = Dataset()
    ds.SOPClassUID = MR
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "MR"
    ds.Rows, ds.Columns = pixels, pixels
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(2 * pixels * pixels)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MR
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    path = folder / "mr.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_storescu_keeps_to_the_advertised_length_and_stores(listen, tmp_path):
    """dcmtk's storescu reads the A-ASSOCIATE-AC's maximum and fragments to it: a 128 KiB
    dataset arrives whole through 16 KiB PDUs."""
    require_tool("storescu")
    handler = Recorder()
    scp = listen(handler, max_pdu_size=MAXIMUM)
    path = _part10(tmp_path, 256)
    result = subprocess.run(
        ["storescu", "-v", "-aet", "SCANNER", "-aec", NODE, "127.0.0.1", str(scp.port), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "Received Store Response (Success)" in result.stderr + result.stdout
    assert len(handler.arrivals) == 1
    stored = pydicom.dcmread(io.BytesIO(handler.arrivals[0].data))
    assert stored.SOPInstanceUID == pydicom.dcmread(path).SOPInstanceUID


def test_the_acceptance_advertises_the_maximum(listen):
    scp = listen(max_pdu_size=MAXIMUM)
    peer = Peer(scp.port)
    peer.send(request_pdu())
    answer = peer.pdu()
    assert answer is not None and answer[0] == ul.PDU_ASSOCIATE_AC
    assert acse.read_acceptance(answer[1]).maximum_length == MAXIMUM
    peer.release()
