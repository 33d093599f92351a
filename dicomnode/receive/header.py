"""The attributes intake needs, read from a received instance's Part 10 bytes.

``dcmread`` builds a ``Dataset`` of every element, and each attribute looked at afterwards is
converted and validated on access: ~0.5 ms per instance, as much as the fdatasync of the whole
file. Intake needs about a dozen top-level attributes. pydicom's element generator walks the
same encoding (every tag and length, undefined-length sequences parsed) without building a
dataset, and only the kept values are converted here: UIDs, integer strings and the US image
description, whose encodings PS3.5 fixes.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import RawDataElement
from pydicom.filereader import data_element_generator

PREAMBLE_BYTES = 128
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
# The one syntax whose whole dataset is deflated (Deflated Image Frame Compression,
# 1.2.840.10008.1.2.8.1, deflates pixel data fragments only).
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
# Values longer than this are skipped, not read: pixel data, large private blobs.
DEFER_BYTES = 1024

_TRANSFER_SYNTAX = 0x00020010
_CHARACTER_SET = 0x00080005
_PIXEL_DATA = 0x7FE00010
_UNDEFINED_LENGTH = 0xFFFFFFFF
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
    _PIXEL_DATA,
]


class UnreadableInstance(ValueError):
    """The bytes are not a Part 10 encoding of a dataset that can be walked to its end."""


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
    instance_number: int | None = None
    images_in_acquisition: int | None = None
    number_of_frames: int | None = None
    samples_per_pixel: int | None = None
    rows: int | None = None
    columns: int | None = None
    bits_allocated: int | None = None
    pixel_data_bytes: int | None = None  # declared length; None when absent or encapsulated
    has_pixel_data: bool = False
    invalid: list[str] = field(default_factory=list)  # keywords of undecodable values, absent

    @property
    def frames(self) -> int:
        return max(self.number_of_frames or 1, 1)


def read_header(data: bytes | memoryview) -> InstanceHeader:
    """Walk a Part 10 encoding (preamble, file meta, dataset) and keep what intake needs.

    Raises ``UnreadableInstance`` when the bytes cannot be walked: no DICM prefix, no transfer
    syntax, an element running past the end of the data (a truncated or garbled stream).
    """
    view = memoryview(data)
    if len(view) < PREAMBLE_BYTES + 4 or bytes(view[PREAMBLE_BYTES : PREAMBLE_BYTES + 4]) != (
        b"DICM"
    ):
        raise UnreadableInstance("no DICM prefix after the 128-byte preamble")
    stream = io.BytesIO(view[PREAMBLE_BYTES + 4 :])
    header = InstanceHeader()
    for element in _elements(
        stream, False, True, stop_when=_past_file_meta, specific_tags=[_TRANSFER_SYNTAX]
    ):
        if element.tag == _TRANSFER_SYNTAX:
            header.transfer_syntax_uid = _text(element)
    if not header.transfer_syntax_uid:
        raise UnreadableInstance("file meta information without a TransferSyntaxUID")
    dataset = view[PREAMBLE_BYTES + 4 + stream.tell() :]
    syntax = header.transfer_syntax_uid
    if syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        try:
            dataset = memoryview(zlib.decompress(dataset, -zlib.MAX_WBITS))
        except zlib.error as exc:
            raise UnreadableInstance(f"deflated dataset does not inflate: {exc}") from None
    little_endian = syntax != EXPLICIT_VR_BIG_ENDIAN
    _read_dataset(header, dataset, syntax == IMPLICIT_VR_LITTLE_ENDIAN, little_endian)
    return header


def _read_dataset(
    header: InstanceHeader, dataset: memoryview, implicit: bool, little_endian: bool
) -> None:
    stream = io.BytesIO(dataset)
    encodings: list[str] | None = None
    for element in _elements(
        stream, implicit, little_endian, defer_size=DEFER_BYTES, specific_tags=_WANTED
    ):
        tag = element.tag
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
        elif tag == _PIXEL_DATA:
            header.has_pixel_data = True
            if element.length != _UNDEFINED_LENGTH:  # encapsulated: fragments, no length
                header.pixel_data_bytes = element.length
    if stream.tell() > len(dataset):
        raise UnreadableInstance("dataset ends inside its last element")
    if len(dataset) - stream.tell() >= 8:  # the walk met a stray item delimiter
        raise UnreadableInstance(f"elements stop {len(dataset) - stream.tell()} bytes early")


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
