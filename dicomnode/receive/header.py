"""The attributes intake needs, read from a received instance's Part 10 bytes.

``dcmread`` builds a ``Dataset`` of every element, and each attribute looked at afterwards is
converted and validated on access: ~0.5 ms per instance, as much as the fdatasync of the whole
file. Intake needs about a dozen top-level attributes. pydicom's element generator walks the
same encoding (every tag and length, undefined-length sequences parsed) without building a
dataset, and only the kept values are converted here: UIDs, integer strings and the US image
description, whose encodings PS3.5 fixes. The walk reads the caller's bytes in place
(``io.BytesIO`` shares a ``bytes`` object), so no copy of the instance is made.

The walk also checks that the dataset is encoded as the file meta says, which for a received
instance is the negotiated transfer syntax (the listener writes the meta), and raises
``NotInTransferSyntax`` where it is not:

- the file meta ends where its group length says; group 0000-0003 elements after it belong to
  the dataset, which must not carry them (a dataset's own TransferSyntaxUID is never believed);
- an explicit VR syntax's dataset must not be implicit VR (pydicom would silently switch), and
  the implicit VR syntax's dataset must not start with an explicit VR element.

A Deflated Explicit VR Little Endian dataset is inflated in bounded steps up to a limit, beyond
which ``TooLarge`` is raised: a deflate bomb costs at most the limit, never its inflated size.
What the pixel data must look like for the syntax is intake's check, from what is kept here.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pydicom import uid as _uid
from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import RawDataElement
from pydicom.filereader import data_element_generator

PREAMBLE_BYTES = 128
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
# The one syntax whose whole dataset is deflated (Deflated Image Frame Compression,
# 1.2.840.10008.1.2.8.1, deflates pixel data fragments only).
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
# Pixel Data of a defined length: Rows x Columns x samples x bits x frames (PS3.5 8.1.1).
NATIVE_SYNTAXES = frozenset(
    {
        IMPLICIT_VR_LITTLE_ENDIAN,
        EXPLICIT_VR_LITTLE_ENDIAN,
        EXPLICIT_VR_BIG_ENDIAN,
        DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    }
)
# Pixel Data of undefined length made of items (PS3.5 A.4). Not the JPIP syntaxes (pixels
# referenced, not sent) nor SMPTE ST 2110 (no Pixel Data element).
ENCAPSULATED_SYNTAXES = frozenset(
    {
        str(syntax)
        for syntax in _uid.AllTransferSyntaxes
        if syntax.is_encapsulated
        and "JPIP" not in syntax.name
        and not str(syntax).startswith("1.2.840.10008.1.2.7.")
    }
    | {"1.2.840.10008.1.2.8.1"}  # Deflated Image Frame Compression
)
# Values longer than this are skipped, not read: pixel data, large private blobs.
DEFER_BYTES = 1024
# Largest inflated dataset when the caller gives no limit: NodeSettings.max_dataset_mb's default.
DEFAULT_MAX_INFLATED_BYTES = 512 * 2**20
_INFLATE_IN_BYTES = 2**20  # deflated input per step (zlib copies the unconsumed rest)
_INFLATE_OUT_BYTES = 4 * 2**20  # inflated output per step

_META_GROUP_LENGTH = 0x00020000
_TRANSFER_SYNTAX = 0x00020010
_CHARACTER_SET = 0x00080005
_PHOTOMETRIC_INTERPRETATION = 0x00280004
_PIXEL_DATA = 0x7FE00010
# Image data that is not Pixel Data: Float and Double Float Pixel Data, Spectroscopy Data.
_OTHER_IMAGE_DATA = frozenset({0x7FE00008, 0x7FE00009, 0x56000020})
# Group 0002 (PS3.10 7.1): in a C-STORE dataset these are refused wherever they stand.
_FILE_META = frozenset(
    0x00020000 | element
    for element in (*range(4), *range(0x10, 0x19), 0x26, 0x27, 0x28, 0x100, 0x102)
)
_UNDEFINED_LENGTH = 0xFFFFFFFF
_ITEM = {True: b"\xfe\xff\x00\xe0", False: b"\xff\xfe\xe0\x00"}  # (FFFE,E000) by endianness
_VRS = frozenset(
    vr.encode("ascii")
    for vr in (
        "AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI "
        "UL UN UR US UT UV"
    ).split()
)
_TEXT = {
    0x00080016: "sop_class_uid",
    0x00080018: "sop_instance_uid",
    0x0020000D: "study_uid",
    0x0020000E: "series_uid",
    0x00080060: "modality",
}
_INTEGER_STRINGS = {
    0x00200013: "instance_number",
    0x00201002: "images_in_acquisition",
    0x00280008: "number_of_frames",
}
_UNSIGNED_SHORTS = {
    0x00280002: "samples_per_pixel",
    0x00280010: "rows",
    0x00280011: "columns",
    0x00280100: "bits_allocated",
}
_SERIES_DESCRIPTION = 0x0008103E
# Only these are made into elements; the walk seeks past the others by their lengths.
_WANTED = [
    *_TEXT,
    *_INTEGER_STRINGS,
    *_UNSIGNED_SHORTS,
    _CHARACTER_SET,
    _SERIES_DESCRIPTION,
    _PHOTOMETRIC_INTERPRETATION,
    _PIXEL_DATA,
    *_OTHER_IMAGE_DATA,
    *_FILE_META,
]


class UnreadableInstance(ValueError):
    """The bytes are not a Part 10 encoding of a dataset that can be walked to its end."""


class NotInTransferSyntax(UnreadableInstance):
    """The dataset is not encoded in the transfer syntax of the file meta (the negotiated one)."""


class TooLarge(UnreadableInstance):
    """The deflated dataset inflates beyond the limit."""


@dataclass
class InstanceHeader:
    """What intake checks and records of one instance; absent attributes are empty or None."""

    transfer_syntax_uid: str = ""
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    study_uid: str = ""
    series_uid: str = ""
    modality: str = ""
    series_description: str = ""
    photometric_interpretation: str = ""
    instance_number: int | None = None
    images_in_acquisition: int | None = None
    number_of_frames: int | None = None
    samples_per_pixel: int | None = None
    rows: int | None = None
    columns: int | None = None
    bits_allocated: int | None = None
    pixel_data_bytes: int | None = None  # declared length; None when absent or undefined
    has_pixel_data: bool = False
    pixel_data_encapsulated: bool = False  # undefined length, starting with an item
    has_other_image_data: bool = False  # Float/Double Float Pixel Data, Spectroscopy Data
    invalid: list[str] = field(default_factory=list)  # keywords of undecodable values, absent

    @property
    def frames(self) -> int:
        return max(self.number_of_frames or 1, 1)


def read_header(data: bytes | memoryview, max_inflated_bytes: int | None = None) -> InstanceHeader:
    """Walk a Part 10 encoding (preamble, file meta, dataset) and keep what intake needs.

    Raises ``UnreadableInstance`` when the bytes cannot be walked: no DICM prefix, no transfer
    syntax, an element running past the end of the data (a truncated or garbled stream);
    ``NotInTransferSyntax`` when the dataset is not encoded as the file meta says; ``TooLarge``
    when a deflated dataset inflates beyond ``max_inflated_bytes``.
    """
    buffer = data if isinstance(data, bytes) else bytes(data)
    start = PREAMBLE_BYTES + 4
    if len(buffer) < start or buffer[PREAMBLE_BYTES:start] != b"DICM":
        raise UnreadableInstance("no DICM prefix after the 128-byte preamble")
    stream = io.BytesIO(buffer)  # shares the bytes, no copy
    stream.seek(start)
    header = InstanceHeader()
    dataset_start = _read_file_meta(header, stream)
    syntax = header.transfer_syntax_uid
    if syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        limit = DEFAULT_MAX_INFLATED_BYTES if max_inflated_bytes is None else max_inflated_bytes
        buffer = _inflate(memoryview(buffer)[dataset_start:], limit)
        stream = io.BytesIO(buffer)
        dataset_start = 0
    little_endian = syntax != EXPLICIT_VR_BIG_ENDIAN
    stream.seek(dataset_start)
    _read_dataset(header, buffer, stream, syntax == IMPLICIT_VR_LITTLE_ENDIAN, little_endian)
    return header


def _read_file_meta(header: InstanceHeader, stream: io.BytesIO) -> int:
    """Read the file meta's TransferSyntaxUID; return where the dataset starts.

    The meta ends where (0002,0000) says (PS3.10 7.1). Without a group length (files written
    by other software, never the listener's) it ends at the first element of another group.
    """
    meta_end: int | None = None
    element_ends = {stream.tell()}
    syntax = ""
    for element in _elements(
        stream, False, True, stop_when=_past_file_meta, defer_size=DEFER_BYTES
    ):
        if type(element) is not RawDataElement:
            raise UnreadableInstance(f"file meta element {_keyword(element.tag)} is a sequence")
        element_ends.add(element.value_tell + element.length)
        value = element.value
        if element.tag == _META_GROUP_LENGTH and meta_end is None:
            if isinstance(value, bytes) and len(value) == 4:
                meta_end = element.value_tell + 4 + struct.unpack("<I", value)[0]
        elif element.tag == _TRANSFER_SYNTAX and not syntax:
            if meta_end is None or element.value_tell < meta_end:
                syntax = _text(element)
    walked_to = stream.tell()
    if meta_end is None:
        meta_end = walked_to
    elif meta_end not in element_ends:
        raise UnreadableInstance("file meta group length does not end at an element")
    elif walked_to > meta_end:
        raise NotInTransferSyntax("file meta elements (group 0002) inside the dataset")
    if not syntax:
        raise UnreadableInstance("file meta information without a TransferSyntaxUID")
    header.transfer_syntax_uid = syntax
    return meta_end


def _inflate(deflated: memoryview, limit: int) -> bytes:
    """Inflate a raw deflate stream (PS3.5 A.5) in bounded steps, refusing past ``limit``."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    chunks: list[bytes] = []
    total = 0
    try:
        for offset in range(0, len(deflated), _INFLATE_IN_BYTES):
            pending: bytes | memoryview = deflated[offset : offset + _INFLATE_IN_BYTES]
            while pending and not inflater.eof:
                chunk = inflater.decompress(pending, _INFLATE_OUT_BYTES)
                total += len(chunk)
                if total > limit:
                    raise TooLarge(_too_large(limit))
                chunks.append(chunk)
                pending = inflater.unconsumed_tail
            if inflater.eof:
                break
        while not inflater.eof:  # output zlib still holds after the last input
            chunk = inflater.decompress(b"", _INFLATE_OUT_BYTES)
            if not chunk:
                break
            total += len(chunk)
            if total > limit:
                raise TooLarge(_too_large(limit))
            chunks.append(chunk)
    except zlib.error as exc:
        raise UnreadableInstance(f"deflated dataset does not inflate: {exc}") from None
    if not inflater.eof:
        raise UnreadableInstance("deflated dataset does not inflate: truncated stream")
    return b"".join(chunks)  # trailing bytes after the stream (a pad byte) are ignored


def _too_large(limit: int) -> str:
    return f"deflated dataset inflates beyond the limit of {limit / 2**20:g} MiB"


def _read_dataset(
    header: InstanceHeader,
    source: bytes,
    stream: io.BytesIO,
    implicit: bool,
    little_endian: bool,
) -> None:
    start = stream.tell()
    end = len(source)
    _check_first_element(source, start, implicit, little_endian)
    encodings: list[str] | None = None
    for element in _elements(
        stream, implicit, little_endian, defer_size=DEFER_BYTES, specific_tags=_WANTED
    ):
        tag = element.tag
        if type(element) is not RawDataElement:  # a wanted tag encoded as a sequence
            raise UnreadableInstance(f"{_keyword(tag)} is encoded as a sequence")
        if not implicit and element.VR is None:  # pydicom switched to implicit VR
            raise NotInTransferSyntax(
                f"{_keyword(tag)} is implicit VR on an explicit VR transfer syntax"
            )
        value = element.value
        if isinstance(value, bytes) and len(value) < element.length != _UNDEFINED_LENGTH:
            raise UnreadableInstance(f"dataset ends inside element {_keyword(tag)}")
        if tag in _TEXT:
            setattr(header, _TEXT[tag], _text(element))
        elif tag in _INTEGER_STRINGS:
            setattr(header, _INTEGER_STRINGS[tag], _integer_string(element, header))
        elif tag in _UNSIGNED_SHORTS:
            setattr(header, _UNSIGNED_SHORTS[tag], _unsigned_short(element, little_endian))
        elif tag == _CHARACTER_SET:
            encodings = convert_encodings(_text(element).split("\\"))
        elif tag == _SERIES_DESCRIPTION and element.value:
            header.series_description = decode_bytes(
                bytes(element.value), encodings or ["iso8859"], set()
            ).strip()
        elif tag == _PHOTOMETRIC_INTERPRETATION:
            header.photometric_interpretation = _text(element)
        elif tag == _PIXEL_DATA:
            header.has_pixel_data = True
            if element.length == _UNDEFINED_LENGTH:  # encapsulated: items, no length
                at = element.value_tell
                header.pixel_data_encapsulated = source[at : at + 4] == _ITEM[little_endian]
            else:
                header.pixel_data_bytes = element.length
        elif tag in _OTHER_IMAGE_DATA:
            header.has_other_image_data = True
        elif tag in _FILE_META:
            raise NotInTransferSyntax(f"file meta element {_keyword(tag)} inside the dataset")
    if stream.tell() > end:
        raise UnreadableInstance("dataset ends inside its last element")
    if end - stream.tell() >= 8:  # the walk met a stray item delimiter
        raise UnreadableInstance(f"elements stop {end - stream.tell()} bytes early")


def _check_first_element(source: bytes, start: int, implicit: bool, little_endian: bool) -> None:
    """Cheap checks on the dataset's first element, which every later one must match."""
    first = source[start : start + 8]
    if len(first) < 8:
        return  # empty: intake finds its attributes missing
    group, element = struct.unpack("<HH" if little_endian else ">HH", first[:4])
    if group <= 0x0003:
        what = "command" if group == 0 else "file meta" if group == 2 else "illegal"
        raise NotInTransferSyntax(f"{what} elements (group {group:04X}) inside the dataset")
    vr = first[4:6]
    if not implicit:
        if vr not in _VRS:
            raise NotInTransferSyntax(
                "dataset is implicit VR on an explicit VR transfer syntax (no VR in its first "
                "element)"
            )
        return
    if vr not in _VRS:
        return
    # Implicit VR: these bytes are the low half of a 4-byte length. Two VR letters there are
    # explicit VR when the tag's dictionary VR says so or the length would run past the end.
    tag = group << 16 | element
    try:
        expected = dictionary_VR(tag).split(" or ")
    except KeyError:
        expected = []
    length = struct.unpack("<I", first[4:8])[0]
    if vr.decode("ascii") in expected or length > len(source) - start - 8:
        raise NotInTransferSyntax("dataset is explicit VR on the implicit VR transfer syntax")


def _elements(
    stream: io.BytesIO, implicit: bool, little_endian: bool, **options: Any
) -> Iterator[RawDataElement]:
    """pydicom's walk of the top-level elements, its many error types made one."""
    try:
        yield from data_element_generator(stream, implicit, little_endian, **options)  # type: ignore[misc]
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on garbage
        raise UnreadableInstance(f"{type(exc).__name__}: {exc}") from None


def _past_file_meta(tag: int, _vr: str | None, _length: int) -> bool:
    return tag >> 16 != 0x0002


def _text(element: RawDataElement) -> str:
    value = element.value
    if not value:
        return ""
    return bytes(value).decode("ascii", errors="replace").strip("\x00 ")


def _integer_string(element: RawDataElement, header: InstanceHeader) -> int | None:
    text = _text(element).split("\\")[0].strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        # keyword only: intake logs these, and a malformed value is not ours to repeat
        header.invalid.append(f"{_keyword(element.tag)} is not an integer")
        return None


def _unsigned_short(element: RawDataElement, little_endian: bool) -> int | None:
    value = element.value
    if not value or len(value) < 2:
        return None
    return int(struct.unpack("<H" if little_endian else ">H", bytes(value[:2]))[0])


def _keyword(tag: int) -> str:
    return keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
