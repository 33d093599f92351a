"""No false Success: what intake refuses, with which status, quarantined, and nothing else hurt.

Each case was answered 0x0000 (or 0x0110 from the database driver) before, although a PACS
cannot take it. Intake is driven in-process with the bytes a listener hands it: its own file
meta naming the negotiated transfer syntax, then the dataset as the sender encoded it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLSLossless,
    generate_uid,
)
from sqlalchemy import select

from db.migrate import upgrade
from db.models import Instance, QuarantinedObject, Series
from db.session import Database
from dicomnode.receive.intake import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    OUT_OF_RESOURCES,
    SUCCESS,
    Intake,
    Received,
)
from dicomnode.receive.spool import SpoolLayout
from tests.node.test_header import _deflate_bomb, _mr, part10

PATIENT = {"PatientName": "Doe^Jane", "PatientID": "PID-90210", "PatientBirthDate": "19310101"}


def _open(url: str, tmp_path: Path, **options: int) -> tuple[Database, Intake, SpoolLayout]:
    database = Database(url)
    upgrade(database)
    layout = SpoolLayout(tmp_path / "spool", tmp_path / "quarantine")
    layout.ensure()
    return database, Intake(database, layout, min_free_bytes=0, **options), layout


@pytest.fixture
def intake(tmp_path: Path) -> Iterator[tuple[Database, Intake, SpoolLayout]]:
    opened = _open(f"sqlite:///{tmp_path / 'node.sqlite3'}", tmp_path, max_dataset_bytes=2**20)
    yield opened
    opened[0].dispose()


def _series(count: int = 3) -> list[Dataset]:
    study, series = generate_uid(), generate_uid()
    datasets = []
    for number in range(1, count + 1):
        ds = _mr(InstanceNumber=number, ImagesInAcquisition=count, **PATIENT)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        datasets.append(ds)
    return datasets


def _item(ds: Dataset, data: bytes, syntax: str | None = None) -> Received:
    return Received(
        data, str(ds.SOPClassUID), str(ds.SOPInstanceUID), "SCANNER", "127.0.0.1", "a1", syntax
    )


def _send(intake: Intake, ds: Dataset, data: bytes | None = None, syntax: str | None = None):  # type: ignore[no-untyped-def]
    return intake.receive(_item(ds, data or part10(ds, ExplicitVRLittleEndian), syntax))


def _no_pixels(ds: Dataset) -> bytes:
    del ds.PixelData
    return part10(ds, ExplicitVRLittleEndian)


def _long_pixels(ds: Dataset) -> bytes:
    ds.PixelData = bytes(64)  # 48 described
    return part10(ds, ExplicitVRLittleEndian)


def _encapsulated_on_native(ds: Dataset) -> bytes:
    ds.PixelData = encapsulate([b"\xff\xd8frame\xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return part10(ds, ExplicitVRLittleEndian)


def _own_transfer_syntax(ds: Dataset) -> bytes:
    ds.add_new(0x00020010, "UI", JPEGLSLossless)
    return part10(ds, ExplicitVRLittleEndian)


def _integer(keyword: str, value: int):  # type: ignore[no-untyped-def]
    """The value written in place: pydicom warns about, or refuses, writing it."""
    tag = {
        "InstanceNumber": b"\x20\x00\x13\x00",
        "ImagesInAcquisition": b"\x20\x00\x02\x10",
        "NumberOfFrames": b"\x28\x00\x08\x00",
    }[keyword]

    def encode(ds: Dataset) -> bytes:
        setattr(ds, keyword, 1)
        data = part10(ds, ExplicitVRLittleEndian)
        at = data.index(tag + b"IS")
        length = int.from_bytes(data[at + 6 : at + 8], "little")
        text = str(value).encode() + (b" " if len(str(value)) % 2 else b"")
        return data[: at + 6] + len(text).to_bytes(2, "little") + text + data[at + 8 + length :]

    return encode


CASES = {
    # 0xC000 cannot understand: the bytes are not an encoding in the negotiated syntax
    "implicit-on-explicit": (
        lambda ds: part10(ds, ExplicitVRLittleEndian, implicit=True),
        CANNOT_UNDERSTAND,
        "implicit VR on an explicit VR transfer syntax",
    ),
    "explicit-on-implicit": (
        lambda ds: part10(ds, ImplicitVRLittleEndian, implicit=False),
        CANNOT_UNDERSTAND,
        "explicit VR on the implicit VR transfer syntax",
    ),
    "own-transfer-syntax": (
        _own_transfer_syntax,
        CANNOT_UNDERSTAND,
        "file meta elements (group 0002) inside the dataset",
    ),
    "native-on-jpeg": (
        lambda ds: part10(ds, JPEGLSLossless),
        CANNOT_UNDERSTAND,
        "PixelData is not encapsulated (native pixels) on a compressed syntax",
    ),
    "encapsulated-on-native": (
        _encapsulated_on_native,
        CANNOT_UNDERSTAND,
        "PixelData is encapsulated (undefined length) on a native syntax",
    ),
    # 0xA700 out of resources: beyond max_dataset_mb once inflated
    "deflate-bomb": (
        lambda ds: _deflate_bomb(64, ds),
        OUT_OF_RESOURCES,
        "deflated dataset inflates beyond the limit of 1 MiB",
    ),
    # 0xA900 dataset does not match the SOP class: what the IOD or a VR forbids
    "no-pixel-data": (_no_pixels, DATASET_DOES_NOT_MATCH_SOP_CLASS, "PixelData missing"),
    "pixel-data-too-long": (
        _long_pixels,
        DATASET_DOES_NOT_MATCH_SOP_CLASS,
        "PixelData holds 64 bytes, 48 expected",
    ),
    "instance-number-2^31": (
        _integer("InstanceNumber", 2**31),
        DATASET_DOES_NOT_MATCH_SOP_CLASS,
        "InstanceNumber outside the signed 32-bit range",
    ),
    "instance-number-below-int32": (
        _integer("InstanceNumber", -(2**31) - 1),
        DATASET_DOES_NOT_MATCH_SOP_CLASS,
        "InstanceNumber outside the signed 32-bit range",
    ),
    "images-in-acquisition-2^64": (
        _integer("ImagesInAcquisition", 2**64 + 7),
        DATASET_DOES_NOT_MATCH_SOP_CLASS,
        "ImagesInAcquisition outside the signed 32-bit range",
    ),
    "number-of-frames-2^40": (
        _integer("NumberOfFrames", 2**40),
        DATASET_DOES_NOT_MATCH_SOP_CLASS,
        "NumberOfFrames outside the signed 32-bit range",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_refused_quarantined_and_the_series_carries_on(intake, case, caplog) -> None:
    database, node, layout = intake
    encode, status, reason = CASES[case]
    first, bad, last = _series()
    assert _send(node, first).status == SUCCESS
    caplog.set_level(logging.INFO, logger="dicomnode.receive.intake")
    outcome = _send(node, bad, encode(bad))
    assert outcome.status == status, outcome.reason
    assert outcome.reason is not None and reason in outcome.reason
    assert _send(node, last).status == SUCCESS  # the same association and series carry on

    refusals = [r for r in caplog.records if r.getMessage().startswith("refused and quarantined")]
    assert len(refusals) == 1
    assert refusals[0].sop_instance_uid == bad.SOPInstanceUID  # type: ignore[attr-defined]
    logged = caplog.text + outcome.reason
    for value in (*PATIENT.values(), "Doe", str(2**31), str(2**40), str(2**64 + 7)):
        assert value not in logged  # neither patient values nor the offending value
    with database.session() as session:
        quarantined = session.scalars(select(QuarantinedObject)).all()
        assert [(q.sop_instance_uid, q.status) for q in quarantined] == [
            (bad.SOPInstanceUID, status)
        ]
        assert quarantined[0].path and Path(quarantined[0].path).exists()
        instances = session.scalars(select(Instance)).all()
        assert {i.sop_instance_uid for i in instances} == {
            first.SOPInstanceUID,
            last.SOPInstanceUID,
        }
        assert {i.transfer_syntax_uid for i in instances} == {ExplicitVRLittleEndian}
        (series,) = session.scalars(select(Series)).all()
        assert series.instances == 2
    reason_file = next(layout.quarantine.glob("*.reason.txt")).read_text()
    assert f"status 0x{status:04X}" in reason_file and reason in reason_file
    assert not list(layout.root.glob(f"*/{bad.SOPInstanceUID}*"))  # not spooled


def test_accepted_variants_of_the_same_checks(intake) -> None:
    """What the checks must not refuse: pad byte, half-chroma YBR, encapsulated on JPEG,
    a deflated dataset within the limit, integers at the ends of the range."""
    _, node, _ = intake
    odd = _mr()
    odd.Rows, odd.Columns, odd.BitsAllocated, odd.BitsStored, odd.HighBit = 3, 3, 8, 8, 7
    odd.PixelData = bytes(10)  # 9 described, one pad byte
    ybr = _mr()
    ybr.SamplesPerPixel, ybr.PhotometricInterpretation, ybr.PlanarConfiguration = (
        3,
        "YBR_FULL_422",
        0,
    )
    ybr.BitsAllocated, ybr.BitsStored, ybr.HighBit = 8, 8, 7
    ybr.PixelData = bytes(4 * 6 * 2)
    jpeg = _mr()
    jpeg.PixelData = encapsulate([b"\xff\xd8frame\xff\xd9"])
    jpeg["PixelData"].VR = "OB"
    jpeg["PixelData"].is_undefined_length = True
    high = _mr(InstanceNumber=2**31 - 1, ImagesInAcquisition=2**31 - 1)
    low = _mr(InstanceNumber=-(2**31))
    report = Dataset()  # no Rows or Columns: no Pixel Data needed
    for keyword in ("SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID"):
        setattr(report, keyword, getattr(odd, keyword))
    report.SOPInstanceUID = generate_uid()
    deflated = _mr()
    for ds, data, syntax in [
        (odd, None, None),
        (ybr, None, None),
        (jpeg, part10(jpeg, JPEGLSLossless), JPEGLSLossless),
        (high, None, ExplicitVRLittleEndian),
        (low, None, None),
        (report, None, None),
        (deflated, part10(deflated, DeflatedExplicitVRLittleEndian), None),
        (deflated, _deflate_bomb(0, deflated), None),  # the same instance again: a duplicate
    ]:
        outcome = _send(node, ds, data, syntax)
        assert outcome.status == SUCCESS, outcome.reason


def test_the_negotiated_syntax_must_be_the_file_meta_one(intake) -> None:
    _, node, _ = intake
    ds = _mr()
    outcome = _send(node, ds, part10(ds, ExplicitVRLittleEndian), ImplicitVRLittleEndian)
    assert outcome.status == CANNOT_UNDERSTAND
    assert "differs from the presentation context's" in (outcome.reason or "")


def test_inflation_limit_defaults_to_max_dataset_mb_default(tmp_path) -> None:
    database, node, _ = _open(f"sqlite:///{tmp_path / 'node.sqlite3'}", tmp_path)
    try:
        ds = _mr()
        assert _send(node, ds, _deflate_bomb(2, ds)).status == SUCCESS
    finally:
        database.dispose()


def test_out_of_range_integers_refused_on_every_database(database_url, tmp_path) -> None:
    """PostgreSQL's INTEGER columns overflowed at 2^31 and SQLite's at 2^63: 0x0110, which
    senders retry for ever. Refused with 0xA900 before the database sees them."""
    database, node, _ = _open(database_url, tmp_path)
    try:
        for keyword in ("InstanceNumber", "ImagesInAcquisition"):
            ds = _mr()
            outcome = _send(node, ds, _integer(keyword, 2**31)(ds))
            assert outcome.status == DATASET_DOES_NOT_MATCH_SOP_CLASS, outcome.reason
        assert _send(node, _mr(InstanceNumber=2**31 - 1)).status == SUCCESS
    finally:
        database.dispose()
