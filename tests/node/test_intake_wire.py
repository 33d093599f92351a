"""No false Success over the wire: a running ``dicomnode serve`` fed by dcmtk's storescu and by
pynetdicom sending files byte for byte (its chunked mode), so that datasets whose encoding
disagrees with the negotiated transfer syntax reach the node as a misbehaving scanner sends them.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, MRImageStorage, generate_uid

from tests.conftest import free_port, require_tool
from tests.node.helpers import RunningNode, storescu
from tests.node.test_header import _mr, part10
from tests.node.test_intake_refusals import PATIENT, _integer

DOES_NOT_MATCH = "Received Store Response (Error: DataSetDoesNotMatchSOPClass)"


@pytest.fixture
def node(tmp_path: Path):
    require_tool("storescu")
    running = RunningNode(tmp_path / "node", free_port(), quiet_seconds=30).start()
    yield running
    running.stop()


def _series(count: int):  # type: ignore[no-untyped-def]
    study, series = generate_uid(), generate_uid()
    datasets = []
    for number in range(1, count + 1):
        ds = _mr(InstanceNumber=number, ImagesInAcquisition=count, **PATIENT)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        datasets.append(ds)
    return datasets


def _instances(node: RunningNode) -> dict[str, str]:
    with sqlite3.connect(node.data_dir / "dicomnode.sqlite3") as conn:
        return dict(conn.execute("select sop_instance_uid, transfer_syntax_uid from instances"))


def test_storescu_image_without_pixels_and_huge_instance_number(node, tmp_path) -> None:
    first, no_pixels, huge, last = _series(4)
    del no_pixels.PixelData
    files = []
    for name, data in [
        ("first", part10(first, ExplicitVRLittleEndian)),
        ("no-pixels", part10(no_pixels, ExplicitVRLittleEndian)),
        ("huge", _integer("InstanceNumber", 2**31)(huge)),
        ("last", part10(last, ExplicitVRLittleEndian)),
    ]:
        path = tmp_path / f"{name}.dcm"
        path.write_bytes(data)
        files.append(path)
    result = storescu(node.port, files, extra=["--no-halt"], check=False)
    text = result.stderr + result.stdout
    assert text.count(DOES_NOT_MATCH) == 2, text
    assert text.count("Received Store Response (Success)") == 2
    assert set(_instances(node)) == {first.SOPInstanceUID, last.SOPInstanceUID}
    reasons = sorted(p.read_text() for p in (node.data_dir / "quarantine").glob("*.reason.txt"))
    assert len(reasons) == 2
    assert any("PixelData missing" in r for r in reasons)
    assert any("InstanceNumber outside the signed 32-bit range" in r for r in reasons)
    log = node.log_path.read_text()
    assert no_pixels.SOPInstanceUID in log and huge.SOPInstanceUID in log
    for value in (*PATIENT.values(), str(2**31)):
        assert value not in log


def test_encoding_that_disagrees_with_the_context_is_refused(node, tmp_path) -> None:
    pynetdicom = pytest.importorskip("pynetdicom")
    from pynetdicom import _config

    first, implicit, native, own_syntax, last = _series(5)
    own_syntax.add_new(0x00020010, "UI", JPEGLSLossless)  # a dataset naming its own syntax
    own_syntax.file_meta = FileMetaDataset()
    own_syntax.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    paths = {}
    for name, data in [
        ("first", part10(first, ExplicitVRLittleEndian)),
        ("implicit", part10(implicit, ExplicitVRLittleEndian, implicit=True)),
        ("native", part10(native, JPEGLSLossless)),  # uncompressed pixels on JPEG-LS
        ("last", part10(last, ExplicitVRLittleEndian)),
    ]:
        paths[name] = tmp_path / f"{name}.dcm"
        paths[name].write_bytes(data)

    ae = pynetdicom.AE(ae_title="SCANNER")
    ae.add_requested_context(MRImageStorage, [ExplicitVRLittleEndian])
    ae.add_requested_context(MRImageStorage, [JPEGLSLossless])
    chunked = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # send a file's dataset bytes unchanged
    try:
        association = ae.associate("127.0.0.1", node.port, ae_title="IQTNODE")
        assert association.is_established
        statuses = {
            name: association.send_c_store(paths[name]).Status
            for name in ("first", "implicit", "native")
        }
        statuses["own_syntax"] = association.send_c_store(own_syntax).Status
        statuses["last"] = association.send_c_store(paths["last"]).Status
        association.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked
    assert statuses == {
        "first": 0x0000,
        "implicit": 0xC000,
        "native": 0xC000,
        "own_syntax": 0xC000,
        "last": 0x0000,
    }
    stored = _instances(node)
    assert stored == {
        first.SOPInstanceUID: ExplicitVRLittleEndian,
        last.SOPInstanceUID: ExplicitVRLittleEndian,
    }
    reasons = "".join(p.read_text() for p in (node.data_dir / "quarantine").glob("*.reason.txt"))
    assert "implicit VR on an explicit VR transfer syntax" in reasons
    assert "PixelData is not encapsulated" in reasons
    assert "file meta elements (group 0002) inside the dataset" in reasons
    log = node.log_path.read_text()
    for value in PATIENT.values():
        assert value not in log
