"""The intake's header reader against pydicom's own reading of the same bytes."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zlib

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

from dicomnode.receive.header import (
    DEFAULT_MAX_INFLATED_BYTES,
    NotInTransferSyntax,
    TooLarge,
    UnreadableInstance,
    read_header,
)


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


# --- the dataset must be encoded as the file meta (the negotiated syntax) says -------------


def file_meta(ds: Dataset, syntax: str) -> bytes:
    """Preamble and file meta as a listener writes them, naming ``syntax``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = syntax
    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    write_file_meta_info(head, meta, enforce_standard=True)
    return b"\x00" * 128 + b"DICM" + head.getvalue()


def part10(ds: Dataset, syntax: str, implicit: bool = False, little_endian: bool = True) -> bytes:
    """A listener's Part 10 bytes: its own file meta naming ``syntax``, then the dataset as
    encoded by the sender (``implicit``, ``little_endian``), which may disagree; deflated when
    ``syntax`` is Deflated Explicit VR Little Endian."""
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = little_endian, implicit
    write_dataset(body, ds)
    encoded = body.getvalue()
    if syntax == DeflatedExplicitVRLittleEndian:
        compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        encoded = compressor.compress(encoded) + compressor.flush()
    return file_meta(ds, syntax) + encoded


def test_part10_helper_matches_pydicom_when_encodings_agree() -> None:
    ds = _mr()
    header = read_header(part10(ds, ImplicitVRLittleEndian, implicit=True))
    assert header.sop_instance_uid == ds.SOPInstanceUID and header.pixel_data_bytes == 48


def test_implicit_dataset_on_an_explicit_syntax_is_refused() -> None:
    # pydicom's walk switches to implicit VR silently: the dataset was stored and forwarded
    # as explicit VR little endian, which the PACS could not read
    data = part10(_mr(), ExplicitVRLittleEndian, implicit=True)
    with pytest.raises(NotInTransferSyntax, match="implicit VR on an explicit VR"):
        read_header(data)


def test_implicit_element_later_in_an_explicit_dataset_is_refused() -> None:
    ds = _mr()
    explicit = part10(ds, ExplicitVRLittleEndian)
    implicit = part10(ds, ExplicitVRLittleEndian, implicit=True)
    # the first element explicit, SOPClassUID onwards implicit
    charset = b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100"
    start = explicit.index(charset) + len(charset)
    rest = implicit[implicit.index(b"\x08\x00\x16\x00") :]
    with pytest.raises(NotInTransferSyntax, match="SOPClassUID is implicit VR"):
        read_header(explicit[:start] + rest)


@pytest.mark.parametrize("rows", [4, 512])  # a large dataset: the misread length fits in it
def test_explicit_dataset_on_the_implicit_syntax_is_refused(rows: int) -> None:
    ds = _mr()
    ds.Rows = ds.Columns = rows
    ds.PixelData = bytes(rows * rows * 2)
    data = part10(ds, ImplicitVRLittleEndian, implicit=False)
    with pytest.raises(NotInTransferSyntax, match="explicit VR on the implicit VR"):
        read_header(data)


def test_dataset_carrying_its_own_transfer_syntax_is_refused() -> None:
    """A dataset's (0002,0010) once overrode the negotiated syntax ("garbage" was recorded)."""
    ds = _mr()
    ds.add_new(0x00020010, "UI", "1.2.840.10008.1.2.4.50")
    data = part10(ds, ExplicitVRLittleEndian)
    with pytest.raises(NotInTransferSyntax, match=r"file meta elements \(group 0002\)"):
        read_header(data)
    ds = _mr()
    ds.add_new(0x00020010, "UI", "1.2.840.10008.1.2.4.50")
    data = part10(ds, ImplicitVRLittleEndian, implicit=True)
    with pytest.raises(NotInTransferSyntax, match="group 0002"):
        read_header(data)


def test_file_meta_element_out_of_order_in_the_dataset_is_refused() -> None:
    data = part10(_mr(), ExplicitVRLittleEndian)
    element = b"\x02\x00\x10\x00UI\x08\x00garbage\x00"
    at = data.index(b"\x08\x00\x16\x00")  # before SOPClassUID, after SpecificCharacterSet
    with pytest.raises(NotInTransferSyntax, match="TransferSyntaxUID inside the dataset"):
        read_header(data[:at] + element + data[at:])


def test_command_elements_in_the_dataset_are_refused() -> None:
    data = part10(_mr(), ExplicitVRLittleEndian)
    at = data.index(b"\x08\x00\x05\x00CS")
    element = b"\x00\x00\x00\x01US\x02\x00\x01\x00"  # (0000,0100) CommandField
    with pytest.raises(NotInTransferSyntax, match="command elements"):
        read_header(data[:at] + element + data[at:])


def test_the_recorded_syntax_is_the_file_meta_one() -> None:
    data = part10(_mr(), ExplicitVRBigEndian, little_endian=False)
    assert read_header(data).transfer_syntax_uid == ExplicitVRBigEndian


def test_native_pixels_on_a_compressed_syntax_are_flagged() -> None:
    header = read_header(part10(_mr(), "1.2.840.10008.1.2.4.80"))  # JPEG-LS, pixels native
    assert header.has_pixel_data and not header.pixel_data_encapsulated
    assert header.pixel_data_bytes == 48


def test_encapsulated_pixels_are_recognised_by_their_first_item() -> None:
    from pydicom.encaps import encapsulate

    ds = _mr()
    ds.PixelData = encapsulate([b"\xff\xd8frame\xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    header = read_header(part10(ds, "1.2.840.10008.1.2.4.70"))
    assert header.pixel_data_encapsulated and header.pixel_data_bytes is None


# --- deflate bomb -----------------------------------------------------------------------------


def _deflate_bomb(inflated_mib: int, ds: Dataset | None = None) -> bytes:
    """A deflated MR whose private OB element inflates to ``inflated_mib`` MiB of zeros."""
    ds = ds or _mr()
    body = part10(ds, ExplicitVRLittleEndian)
    body = body[body.index(b"\x08\x00\x05\x00CS") :]
    at = body.index(b"\x08\x00\x16\x00")  # a private element sorts anywhere: put it early
    blob = b"\x07\x00\x10\x00OB\x00\x00" + struct.pack("<I", inflated_mib * 2**20)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [compressor.compress(body[:at] + blob)]
    zeros = bytes(2**20)
    parts += [compressor.compress(zeros) for _ in range(inflated_mib)]
    parts += [compressor.compress(body[at:]), compressor.flush()]
    return file_meta(ds, DeflatedExplicitVRLittleEndian) + b"".join(parts)


def test_deflate_bomb_is_refused_within_the_limit() -> None:
    bomb = _deflate_bomb(256)
    assert len(bomb) < 2**20  # under 1 MiB on the wire
    tracemalloc.start()
    try:
        with pytest.raises(TooLarge, match="beyond the limit of 8 MiB"):
            read_header(bomb, max_inflated_bytes=8 * 2**20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 24 * 2**20  # the limit and one step, never the 256 MiB it inflates to


def test_deflated_dataset_within_the_limit_is_read() -> None:
    bomb = _deflate_bomb(2)
    header = read_header(bomb, max_inflated_bytes=4 * 2**20)
    assert header.modality == "MR" and header.pixel_data_bytes == 48


def test_truncated_deflate_stream_is_unreadable() -> None:
    data = _encoded(_mr(), DeflatedExplicitVRLittleEndian)
    with pytest.raises(UnreadableInstance, match="truncated"):
        read_header(data[:-20])


def test_default_inflation_limit_is_the_settings_default() -> None:
    from dicomnode.config import NodeSettings

    assert DEFAULT_MAX_INFLATED_BYTES == NodeSettings().max_dataset_mb * 2**20
