"""The intake's header reader against pydicom's own reading of the same bytes."""

from __future__ import annotations

import io

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

from dicomnode.receive.header import UnreadableInstance, read_header


def _mr(**extra: object) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "MR"
    ds.SeriesDescription = "T1 axial Müller"
    ds.InstanceNumber = 7
    ds.ImagesInAcquisition = 30
    ds.ReferencedImageSequence = [Dataset()]  # a nested item the walk must step over
    ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns = 4, 6
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 16, 12, 11
    ds.PixelRepresentation = 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = bytes(range(48))
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    return ds


def _encoded(ds: Dataset, syntax: str) -> bytes:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = syntax
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "syntax",
    [
        ImplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        ExplicitVRBigEndian,
        DeflatedExplicitVRLittleEndian,
    ],
)
def test_header_matches_pydicom_in_every_native_syntax(syntax: str) -> None:
    data = _encoded(_mr(), syntax)
    header = read_header(data)
    reference = pydicom.dcmread(io.BytesIO(data))
    assert header.transfer_syntax_uid == syntax
    assert header.sop_class_uid == reference.SOPClassUID
    assert header.sop_instance_uid == reference.SOPInstanceUID
    assert header.study_uid == reference.StudyInstanceUID
    assert header.series_uid == reference.SeriesInstanceUID
    assert header.modality == "MR"
    assert header.series_description == reference.SeriesDescription == "T1 axial Müller"
    assert header.instance_number == 7
    assert header.images_in_acquisition == 30
    assert (header.rows, header.columns, header.bits_allocated) == (4, 6, 16)
    assert header.samples_per_pixel == 1
    assert header.has_pixel_data and header.pixel_data_bytes == 48
    assert header.frames == 1 and header.invalid == []


def test_encapsulated_pixel_data_has_no_declared_length() -> None:
    from pydicom.encaps import encapsulate

    ds = _mr(NumberOfFrames=2)
    ds.PixelData = encapsulate([b"\xff\xd8frame-one\xff\xd9", b"\xff\xd8frame-two\xff\xd9"])
    ds["PixelData"].VR = "OB"
    header = read_header(_encoded(ds, "1.2.840.10008.1.2.4.80"))  # JPEG-LS lossless
    assert header.has_pixel_data and header.pixel_data_bytes is None
    assert header.number_of_frames == 2 and header.frames == 2


def test_truncated_stream_is_unreadable() -> None:
    data = _encoded(_mr(), ExplicitVRLittleEndian)
    with pytest.raises(UnreadableInstance, match="dataset ends inside"):
        read_header(data[:-10])


def test_garbage_and_missing_prefix_are_unreadable() -> None:
    with pytest.raises(UnreadableInstance, match="DICM"):
        read_header(b"\x00" * 200)
    data = _encoded(_mr(), ExplicitVRLittleEndian)
    head = data.index(b"\x08\x00\x16\x00")  # SOPClassUID: its length field follows the VR
    garbled = data[: head + 6] + b"\xff\x7f" + data[head + 8 :]
    with pytest.raises(UnreadableInstance):
        read_header(garbled)


def test_non_integer_string_is_reported_not_raised() -> None:
    data = _encoded(_mr(InstanceNumber=77), ExplicitVRLittleEndian)
    element = b"\x20\x00\x13\x00IS\x02\x0077"
    assert data.count(element) == 1
    header = read_header(data.replace(element, element[:-2] + b"x7"))
    assert header.instance_number is None
    assert header.invalid == ["InstanceNumber is not an integer"]  # the value is not repeated


def test_truncated_pixel_data_beyond_the_read_limit_is_unreadable() -> None:
    ds = _mr()
    ds.Rows, ds.Columns = 64, 64
    ds.PixelData = bytes(64 * 64 * 2)  # skipped, not read: the walk checks where it lands
    data = _encoded(ds, ExplicitVRLittleEndian)
    assert read_header(data).pixel_data_bytes == 8192
    with pytest.raises(UnreadableInstance, match="dataset ends inside its last element"):
        read_header(data[:-100])
