"""The intake's header reader fuzzed in-process with hypothesis (issue 14, D).

``read_header`` reads every received instance before anything else looks at it, so whatever the
bytes it must either return or raise ``UnreadableInstance`` (its subclasses
``NotInTransferSyntax`` and ``TooLarge`` are the documented refusals), within bounded time and
memory: a deflated dataset is never inflated past the cap the intake passes (the node's
``max_dataset_mb``). It is called as the intake calls it (``intake._parse``): the Part 10 bytes
and the inflation cap.

Inputs: mutations of valid encodings in every native syntax (byte flips, insertions, deletions,
truncations, length fields overwritten), element soups (interesting tags, every VR, lying
lengths) after a valid or broken file meta, raw bytes after the DICM prefix, and deflated
garbage and bombs around the cap. ``DICOMNODE_HEADER_FUZZ_EXAMPLES`` sets the number of
examples (default 2500, about 25 s). The cases in ``fuzz_seeds/header/`` (once failing) are
replayed every run.
"""

from __future__ import annotations

import io
import json
import os
import struct
import time
import tracemalloc
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    MRImageStorage,
)

from dicomnode.receive.header import InstanceHeader, UnreadableInstance, read_header

EXAMPLES = int(os.environ.get("DICOMNODE_HEADER_FUZZ_EXAMPLES", "2500"))
CAP = 4 * 2**20  # the inflation cap passed, as the intake passes max_dataset_mb
# Inflating keeps the chunks and their join: about twice the cap, plus the input and the walk.
MEMORY_BOUND = 3 * CAP + 16 * 2**20
SECONDS_PER_CALL = 2.0
SEEDS = Path(__file__).with_name("fuzz_seeds") / "header"
# pydicom warns about the undecodable character sets and values the fuzzer feeds it
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
PREFIX = b"\x00" * 128 + b"DICM"


def read(data: bytes) -> InstanceHeader | None:
    """``read_header`` as the intake calls it; None for a refusal. Anything else propagates."""
    try:
        return read_header(data, CAP)
    except UnreadableInstance:
        return None


def _dataset(number: int) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = ["ISO_IR 192", "ISO_IR 100", "ISO_IR 101"][number % 3]
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = f"1.2.826.0.1.3680043.9.9999.14.{number}"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.9.9999.14.100"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.9.9999.14.101"
    ds.Modality = "MR"
    ds.SeriesDescription = "T1 ax Müller"
    ds.InstanceNumber = number + 1
    ds.ImagesInAcquisition = 30
    ds.NumberOfFrames = 1
    ds.ReferencedImageSequence = [Dataset(), Dataset()]
    ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID = "1.2.3"
    ds.ReferencedImageSequence[1].ReferencedSOPClassUID = MRImageStorage
    ds.Rows, ds.Columns = 4, 6
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 16, 12, 11
    ds.PixelRepresentation = 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.add_new(0x00091010, "LO", "private")
    ds.PixelData = bytes(range(48))
    return ds


def _encoded(ds: Dataset, syntax: str) -> bytes:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = syntax
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


SYNTAXES = [
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
]
BASES = [_encoded(_dataset(n), syntax) for n, syntax in enumerate(SYNTAXES)]


def _meta(syntax: bytes, group_length: int | None = None) -> bytes:
    def element(tag: int, vr: bytes, value: bytes) -> bytes:
        if len(value) % 2:
            value += b"\x00"
        if vr == b"OB":
            return struct.pack("<HH2sHI", 2, tag, vr, 0, len(value)) + value
        return struct.pack("<HH2sH", 2, tag, vr, len(value)) + value

    body = (
        element(0x0001, b"OB", b"\x00\x01")
        + element(0x0002, b"UI", MRImageStorage.encode())
        + element(0x0003, b"UI", b"1.2.3.4")
        + element(0x0010, b"UI", syntax)
    )
    length = len(body) if group_length is None else group_length
    return element(0x0000, b"UL", struct.pack("<I", length & 0xFFFFFFFF)) + body


def _raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def deflate_bomb(prefix: bytes, zeros: int) -> bytes:
    """``prefix`` then ``zeros`` zero bytes, raw-deflated at ~1000:1 (a byte-aligned block of
    1 MiB of zeros that refers only to itself, repeated, then an empty final block)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    out = compressor.compress(prefix) + compressor.flush(zlib.Z_FULL_FLUSH)
    chunk = 1 << 20
    block = compressor.compress(bytes(chunk)) + compressor.flush(zlib.Z_FULL_FLUSH)
    whole, rest = divmod(zeros, chunk)
    tail = compressor.compress(bytes(rest)) + compressor.flush(zlib.Z_FULL_FLUSH) if rest else b""
    return out + block * whole + tail + b"\x03\x00"


class Described(bytes):
    """Bytes that hypothesis reports by how they were made, not by their (long) value."""

    description = ""

    def __repr__(self) -> str:
        return self.description


def bomb_instance(inflated: int) -> bytes:
    """A Part 10 instance in the deflated syntax: a valid MR whose PixelData of ``inflated``
    zero bytes deflates to about a thousandth of that."""
    ds = _dataset(7)
    del ds.PixelData
    head = _encoded(ds, ExplicitVRLittleEndian)
    meta_end = len(PREFIX) + 12 + struct.unpack_from("<I", head, len(PREFIX) + 8)[0]
    dataset = head[meta_end:] + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, inflated)
    data = Described(
        PREFIX + _meta(DeflatedExplicitVRLittleEndian.encode()) + deflate_bomb(dataset, inflated)
    )
    data.description = f"bomb_instance({inflated})"
    return data


# --- strategies (built once: a strategy made inside a draw costs its validation every time) ----
LENGTHS = [0, 1, 2, 3, 4, 7, 8, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFE, 0xFFFFFFFF]
OPERATIONS = st.sampled_from(["flip", "insert", "delete", "truncate", "length", "duplicate"])
BYTE = st.integers(0, 255)
SHORT_BYTES = st.binary(min_size=1, max_size=16)
LENGTH_VALUES = st.sampled_from(LENGTHS) | st.integers(0, 2**32 - 1)
LENGTH_SIZES = st.sampled_from([2, 4])
SMALL = st.integers(1, 16)
SPAN = st.integers(1, 64)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 6))):
        operation = draw(OPERATIONS)
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if operation == "flip" and data:
            data[at] = draw(BYTE)
        elif operation == "insert":
            data[at:at] = draw(SHORT_BYTES)
        elif operation == "delete":
            del data[at : at + draw(SMALL)]
        elif operation == "truncate":
            del data[at:]
        elif operation == "length" and at + 4 <= len(data):
            value = draw(LENGTH_VALUES)
            size = draw(LENGTH_SIZES)
            data[at : at + size] = value.to_bytes(4, "little")[:size]
        elif operation == "duplicate":
            data[at:at] = data[at : at + draw(SPAN)]
    return bytes(data)


TAGS = st.sampled_from(
    [
        0x00020010,
        0x00080005,
        0x00080016,
        0x00080018,
        0x00080060,
        0x0008103E,
        0x0020000D,
        0x0020000E,
        0x00200013,
        0x00201002,
        0x00280002,
        0x00280004,
        0x00280008,
        0x00280010,
        0x00280011,
        0x00280100,
        0x7FE00010,
        0x7FE00008,
        0x7FE00009,
        0x56000020,
        0x00091010,
        0xFFFEE000,
        0xFFFEE00D,
        0xFFFEE0DD,
        0x00081140,
        0x00000000,
        0x00020000,
    ]
) | st.integers(0, 2**32 - 1)
VR_LIST = [
    b"AE",
    b"AS",
    b"AT",
    b"CS",
    b"DA",
    b"DS",
    b"DT",
    b"FL",
    b"FD",
    b"IS",
    b"LO",
    b"LT",
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"PN",
    b"SH",
    b"SL",
    b"SQ",
    b"SS",
    b"ST",
    b"SV",
    b"TM",
    b"UC",
    b"UI",
    b"UL",
    b"UN",
    b"UR",
    b"US",
    b"UT",
    b"UV",
]
VRS = st.sampled_from(VR_LIST) | st.binary(min_size=2, max_size=2)
LONG_VRS = {
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"SQ",
    b"UC",
    b"UN",
    b"UR",
    b"UT",
    b"UV",
    b"SV",
}
VALUES = st.binary(max_size=40) | st.sampled_from(
    [
        b"123",
        b"99999999999999999999999",
        b"-1",
        b"1\\2",
        b"1.2.3\x00",
        b"\xff\xfe",
        b"",
        b" ",
        b"MR",
        b"ISO_IR 192",
        b"\x1b$B",
    ]
)
LIES = st.sampled_from(LENGTHS)
SOUP_SYNTAXES = st.sampled_from([*SYNTAXES, JPEGBaseline8Bit, "garbage", "1.2.840.10008.1.2é"])
GROUP_LENGTHS = st.none() | st.sampled_from(LENGTHS) | st.integers(0, 400)
COUNTS = st.integers(0, 12)


@st.composite
def element_soup(draw: st.DrawFn) -> bytes:
    syntax = draw(SOUP_SYNTAXES)
    implicit = syntax == ImplicitVRLittleEndian
    endian = ">" if syntax == ExplicitVRBigEndian else "<"
    body = b""
    for _ in range(draw(COUNTS)):
        tag = draw(TAGS)
        value = draw(VALUES)
        length = len(value) if draw(st.booleans()) else draw(LIES)
        group, element = tag >> 16, tag & 0xFFFF
        if implicit or group == 0xFFFE:
            body += struct.pack(f"{endian}HHI", group, element, length) + value
            continue
        vr = draw(VRS)
        if vr in LONG_VRS:
            body += struct.pack(f"{endian}HH2sHI", group, element, vr, 0, length) + value
        else:
            body += struct.pack(f"{endian}HH2sH", group, element, vr, length & 0xFFFF) + value
    if syntax == DeflatedExplicitVRLittleEndian and draw(st.booleans()):
        body = _raw_deflate(body)
    group_length = draw(GROUP_LENGTHS)
    return PREFIX + _meta(syntax.encode(), group_length) + body


DEFLATED_KINDS = st.sampled_from(["random", "deflated-random", "truncated", "trailing", "bomb"])
BOMB_SIZES = st.sampled_from([CAP - 4096, CAP - 100, CAP, CAP + 1, CAP + 4096, 4 * CAP])
SOME_BYTES = st.binary(max_size=200)
TRAILING = st.binary(min_size=1, max_size=20)
CUTS = st.integers(len(PREFIX), len(BASES[3]) - 1)


@st.composite
def deflated(draw: st.DrawFn) -> bytes:
    meta = _meta(DeflatedExplicitVRLittleEndian.encode())
    kind = draw(DEFLATED_KINDS)
    if kind == "random":
        return PREFIX + meta + draw(SOME_BYTES)
    if kind == "deflated-random":
        return PREFIX + meta + _raw_deflate(draw(SOME_BYTES))
    if kind == "truncated":
        return BASES[3][: draw(CUTS)]
    if kind == "trailing":
        return BASES[3] + draw(TRAILING)
    return bomb_instance(draw(BOMB_SIZES))  # around the cap: under it read, over it refused


INPUTS = st.one_of(
    mutated(),
    element_soup(),
    st.binary(max_size=600).map(lambda tail: PREFIX + tail),
    st.binary(max_size=200),
    deflated(),
)


# --- tests ---------------------------------------------------------------------------------------
def test_the_bases_are_read():
    for data in BASES:
        header = read_header(data, CAP)
        assert header.sop_class_uid == MRImageStorage and header.rows == 4


@pytest.fixture
def traced():
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(data=INPUTS)
def test_header_reader_only_refuses(traced, data):
    tracemalloc.reset_peak()
    before, _ = tracemalloc.get_traced_memory()
    started = time.monotonic()
    read(data)  # anything but UnreadableInstance (or a subclass) fails the example
    elapsed = time.monotonic() - started
    _, peak = tracemalloc.get_traced_memory()
    assert elapsed < SECONDS_PER_CALL, f"{elapsed:.2f}s for {len(data)} bytes"
    assert peak - before < MEMORY_BOUND, f"{(peak - before) >> 20} MiB for {len(data)} bytes"


def test_deflate_bomb_is_refused_within_the_cap(traced):
    """~1 MB that inflates to 1 GiB: refused, and never inflated much past the cap."""
    bomb = bomb_instance(2**30)
    assert len(bomb) < 2 * 2**20
    tracemalloc.reset_peak()
    before, _ = tracemalloc.get_traced_memory()
    started = time.monotonic()
    with pytest.raises(UnreadableInstance):
        read_header(bomb, CAP)
    elapsed = time.monotonic() - started
    _, peak = tracemalloc.get_traced_memory()
    assert peak - before < MEMORY_BOUND, f"inflating took {(peak - before) >> 20} MiB"
    assert elapsed < SECONDS_PER_CALL


def test_deflated_instance_under_the_cap_is_read():
    header = read_header(bomb_instance(CAP // 2), CAP)
    assert header.has_pixel_data and header.pixel_data_bytes == CAP // 2


def _seed_input(spec: dict) -> bytes:
    if "bomb_inflated_bytes" in spec:
        return bomb_instance(int(spec["bomb_inflated_bytes"]))
    return bytes.fromhex(spec["hex"])


SEED_FILES = sorted(SEEDS.glob("*.json"))


@pytest.mark.parametrize("path", SEED_FILES, ids=[path.stem for path in SEED_FILES])
def test_header_seed(traced, path):
    spec = json.loads(path.read_text())
    assert spec.get("defect"), "say what went wrong"
    data = _seed_input(spec)
    tracemalloc.reset_peak()
    before, _ = tracemalloc.get_traced_memory()
    started = time.monotonic()
    result = read(data)
    elapsed = time.monotonic() - started
    _, peak = tracemalloc.get_traced_memory()
    assert elapsed < SECONDS_PER_CALL, spec["defect"]
    assert peak - before < MEMORY_BOUND, f"{(peak - before) >> 20} MiB: {spec['defect']}"
    if spec.get("expect") == "refused":
        assert result is None, spec["defect"]
