"""Wire-level fuzzing of a running node: PDUs built by hand, mutated, sent, and the answer judged.

Used by ``test_fuzz_wire.py`` (random cases for a bounded time) and ``test_fuzz_seeds.py`` (the
cases in ``fuzz_seeds/`` that once failed). Nothing here imports the node: the peer is judged by
its bytes only (PS3.8 for the Upper Layer, PS3.7 for the command sets).

A case is what a peer does on one TCP connection: optionally a valid A-ASSOCIATE-RQ first (it
must be accepted, else the case is inconclusive), then steps (bytes sent at once, or dripped a
byte at a time), then it reads what the node answers. The verdict:

- ``reply``: the node answered our last bytes with a PDU a requestor understands: A-ASSOCIATE-AC
  or -RJ, A-ABORT, A-RELEASE-RP, or P-DATA-TF holding a command set with a Status;
- ``timeout-close``: no PDU, but the node closed the connection no sooner than its documented
  deadline for the PDU it was waiting for (PS3.8's ARTIM before association:
  ``association_request_timeout_seconds`` from TCP connect; after it,
  ``network_timeout_seconds`` from the start of the wait);
- ``bare-close``: the node closed (FIN or reset) well before that deadline without a PDU: the
  requestor cannot tell why (defect 6 of issue 14);
- ``hang``: neither a reply nor a close by the deadline plus ``SLACK_SECONDS`` (a slow or
  truncated peer holds a slot: defect 3);
- ``bad-reply``: bytes that are not a PDU of the above kinds, or P-DATA without a status;
- ``closed-after-abort``: no PDU and an early close, after we sent an A-ABORT (which PS3.8
  does not answer), which is fine.

Oracles tighten a verdict for cases whose right answer is known: ``reject`` (an A-ASSOCIATE-RJ,
optionally with a given source and reason), ``not-success`` (never a Success or Warning status
for the store) and ``failure-status`` (a DIMSE failure status among the allowed ones).

Every case is reproducible from ``(seed, index)`` (``make_case``) and can be written as a JSON
seed (``case_to_json``) to replay exactly the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import select
import socket
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite

# --- Upper Layer constants (PS3.8 9.3) ---------------------------------------------------------
A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_RELEASE_RP = 0x06
A_ABORT = 0x07
REPLY_TYPES = {A_ASSOCIATE_AC, A_ASSOCIATE_RJ, P_DATA_TF, A_RELEASE_RP, A_ABORT}
TERMINAL_TYPES = {A_ASSOCIATE_RJ, A_ABORT, A_RELEASE_RP}
PDU_NAMES = {
    A_ASSOCIATE_RQ: "A-ASSOCIATE-RQ",
    A_ASSOCIATE_AC: "A-ASSOCIATE-AC",
    A_ASSOCIATE_RJ: "A-ASSOCIATE-RJ",
    P_DATA_TF: "P-DATA-TF",
    A_RELEASE_RQ: "A-RELEASE-RQ",
    A_RELEASE_RP: "A-RELEASE-RP",
    A_ABORT: "A-ABORT",
}

APPLICATION_CONTEXT = b"1.2.840.10008.3.1.1.1"
VERIFICATION = b"1.2.840.10008.1.1"
MR_IMAGE_STORAGE = b"1.2.840.10008.5.1.4.1.1.4"
CT_IMAGE_STORAGE = b"1.2.840.10008.5.1.4.1.1.2"
IMPLICIT_LE = b"1.2.840.10008.1.2"
EXPLICIT_LE = b"1.2.840.10008.1.2.1"
DEFLATED_LE = b"1.2.840.10008.1.2.1.99"
JPEG_BASELINE = b"1.2.840.10008.1.2.4.50"
OUR_IMPLEMENTATION_UID = b"1.2.826.0.1.3680043.9.9999.14"
OUR_IMPLEMENTATION_VERSION = b"WIREFUZZ_1"

# The presentation contexts every associating case proposes (id -> abstract, transfer syntaxes).
CTX_ECHO = 1
CTX_MR_EXPLICIT = 3
CTX_MR_IMPLICIT = 5
CTX_MR_DEFLATED = 7
CTX_MR_JPEG = 9
CTX_UNKNOWN = 11  # an abstract syntax the node does not serve: rejected in the AC
STANDARD_CONTEXTS: list[tuple[int, bytes, list[bytes]]] = [
    (CTX_ECHO, VERIFICATION, [IMPLICIT_LE]),
    (CTX_MR_EXPLICIT, MR_IMAGE_STORAGE, [EXPLICIT_LE]),
    (CTX_MR_IMPLICIT, MR_IMAGE_STORAGE, [IMPLICIT_LE]),
    (CTX_MR_DEFLATED, MR_IMAGE_STORAGE, [DEFLATED_LE]),
    (CTX_MR_JPEG, MR_IMAGE_STORAGE, [JPEG_BASELINE]),
    (CTX_UNKNOWN, b"1.2.3.4.5.6.7.8.9", [EXPLICIT_LE]),
]
NODE_AE = b"IQTNODE"
FUZZ_AE = b"WIREFUZZ"
# Outside the node's source_networks in the test configuration; loopback all the same on Linux.
REFUSED_SOURCE = "127.0.0.2"

# Status classes (PS3.7 C): Success, Warning (0x0001, 0xB...), everything else is a failure.
SUCCESS = 0x0000

# (source, reason) of a legal A-ASSOCIATE-RJ (PS3.8 table 9-21): service user, ACSE provider,
# presentation provider.
LEGAL_REJECTIONS = {(1, 1), (1, 2), (1, 3), (1, 7), (2, 1), (2, 2), (3, 1), (3, 2)}
# (source, reason) of a legal A-ABORT (PS3.8 table 9-26): the user (reason not significant),
# the provider with one of its reasons.
LEGAL_ABORTS = {(0, 0), *((2, reason) for reason in (0, 1, 2, 4, 5, 6))}

SLACK_SECONDS = 3.0  # on top of a documented deadline before a silent node counts as hanging
TIMEOUT_FLOOR = 0.8  # a silent close this early (fraction of the deadline) is a bare close


@dataclass(frozen=True)
class Timeouts:
    """The node's deadlines as configured for the test (NodeSettings)."""

    association_request: float
    network: float


# --- encoding ------------------------------------------------------------------------------------
def pdu(kind: int, body: bytes, reserved: int = 0) -> bytes:
    return struct.pack(">BBI", kind, reserved, len(body)) + body


def item(kind: int, value: bytes, length: int | None = None) -> bytes:
    size = len(value) if length is None else length
    return struct.pack(">BBH", kind, 0, size & 0xFFFF) + value


def ae_field(title: bytes) -> bytes:
    return title[:16].ljust(16, b" ")


@dataclass
class AssociateRQ:
    """An A-ASSOCIATE-RQ kept as fields, so that a mutation changes one of them."""

    protocol_version: int = 1
    called: bytes = ae_field(NODE_AE)
    calling: bytes = ae_field(FUZZ_AE)
    application_context: bytes = APPLICATION_CONTEXT
    contexts: list[tuple[int, bytes, list[bytes]]] = field(
        default_factory=lambda: [(c, a, list(t)) for c, a, t in STANDARD_CONTEXTS]
    )
    maximum_length: bytes = struct.pack(">I", 65536)
    implementation_uid: bytes = OUR_IMPLEMENTATION_UID
    implementation_version: bytes | None = OUR_IMPLEMENTATION_VERSION
    extra_user_items: list[bytes] = field(default_factory=list)
    extra_items: list[bytes] = field(default_factory=list)

    def context_items(self) -> list[bytes]:
        out = []
        for context_id, abstract, transfers in self.contexts:
            sub = item(0x30, abstract) + b"".join(item(0x40, t) for t in transfers)
            out.append(item(0x20, bytes((context_id & 0xFF, 0, 0, 0)) + sub))
        return out

    def user_item(self) -> bytes:
        sub = item(0x51, self.maximum_length) + item(0x52, self.implementation_uid)
        if self.implementation_version is not None:
            sub += item(0x55, self.implementation_version)
        return item(0x50, sub + b"".join(self.extra_user_items))

    def items(self) -> list[bytes]:
        return [
            item(0x10, self.application_context),
            *self.context_items(),
            self.user_item(),
            *self.extra_items,
        ]

    def body(self) -> bytes:
        fixed = struct.pack(">HH", self.protocol_version & 0xFFFF, 0)
        return fixed + self.called + self.calling + bytes(32) + b"".join(self.items())

    def encode(self) -> bytes:
        return pdu(A_ASSOCIATE_RQ, self.body())


def standard_request() -> bytes:
    return AssociateRQ().encode()


def release_rq() -> bytes:
    return pdu(A_RELEASE_RQ, bytes(4))


def abort_rq() -> bytes:
    return pdu(A_ABORT, bytes(4))


def pdv(context_id: int, control: int, data: bytes, length: int | None = None) -> bytes:
    size = len(data) + 2 if length is None else length
    return struct.pack(">IBB", size & 0xFFFFFFFF, context_id & 0xFF, control & 0xFF) + data


def p_data(*pdvs: bytes) -> bytes:
    return pdu(P_DATA_TF, b"".join(pdvs))


def encode_command(elements: Iterable[tuple[int, bytes]], group_length: bool = True) -> bytes:
    """Group-0000 elements in implicit VR little endian, in the order given."""
    body = b""
    for tag, value in elements:
        if len(value) % 2:
            value += b"\x00"
        body += struct.pack("<HHI", 0x0000, tag, len(value)) + value
    if group_length:
        body = struct.pack("<HHII", 0x0000, 0x0000, 4, len(body)) + body
    return body


def us(value: int) -> bytes:
    return struct.pack("<H", value & 0xFFFF)


def store_command(
    sop_instance: bytes, message_id: int = 1, sop_class: bytes = MR_IMAGE_STORAGE
) -> list[tuple[int, bytes]]:
    return [
        (0x0002, sop_class),
        (0x0100, us(0x0001)),
        (0x0110, us(message_id)),
        (0x0700, us(0)),
        (0x0800, us(0x0000)),
        (0x1000, sop_instance),
    ]


def echo_command(message_id: int = 1) -> list[tuple[int, bytes]]:
    return [
        (0x0002, VERIFICATION),
        (0x0100, us(0x0030)),
        (0x0110, us(message_id)),
        (0x0800, us(0x0101)),
    ]


def message(context_id: int, command: bytes, dataset: bytes | None, fragment: int = 16384) -> bytes:
    """A whole DIMSE message as P-DATA-TF PDUs of one PDV each."""
    out = [p_data(pdv(context_id, 0x03, command))]
    if dataset is not None:
        if not dataset:
            out.append(p_data(pdv(context_id, 0x02, b"")))
        for start in range(0, len(dataset), fragment):
            last = start + fragment >= len(dataset)
            out.append(
                p_data(pdv(context_id, 0x02 if last else 0x00, dataset[start : start + fragment]))
            )
    return b"".join(out)


def uid_for(*parts: object) -> bytes:
    """A valid, deterministic UID (2.25 + a number from a hash of ``parts``)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()[:15]
    return b"2.25." + str(int.from_bytes(digest, "big")).encode()


FUZZ_STUDY_UID = uid_for("fuzz-study")
FUZZ_SERIES_UID = uid_for("fuzz-series")


def mr_dataset(sop_instance: bytes, rows: int = 8, columns: int = 8, **extra: object) -> Dataset:
    """A small, valid MR image, in the fuzz series (no routing rule matches it)."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = MR_IMAGE_STORAGE.decode()
    ds.SOPInstanceUID = sop_instance.decode()
    ds.StudyInstanceUID = FUZZ_STUDY_UID.decode()
    ds.SeriesInstanceUID = FUZZ_SERIES_UID.decode()
    ds.Modality = "MR"  # no field strength: the test's one rule does not match, no job
    ds.SeriesDescription = "WIREFUZZ"
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = bytes((i * 7) & 0xFF for i in range(rows * columns * 2))
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    return ds


def encode_dataset(ds: Dataset, implicit: bool) -> bytes:
    """The dataset alone (no preamble, no file meta), as a C-STORE carries it."""
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, implicit_vr=implicit, little_endian=True)
    return buffer.getvalue()


def deflate(data: bytes, level: int = 6) -> bytes:
    compressor = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def deflate_bomb(prefix: bytes, inflated_bytes: int) -> bytes:
    """``prefix`` then ``inflated_bytes`` zero bytes, raw-deflated at ~1000:1 in milliseconds:
    one byte-aligned block of 1 MiB of zeros (a full flush resets the history, so it refers
    only to itself) repeated, then an empty final block."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    head = compressor.compress(prefix) + compressor.flush(zlib.Z_FULL_FLUSH)
    chunk = 1 << 20
    block = compressor.compress(bytes(chunk)) + compressor.flush(zlib.Z_FULL_FLUSH)
    whole, rest = divmod(inflated_bytes, chunk)
    tail = b""
    if rest:
        tail = compressor.compress(bytes(rest)) + compressor.flush(zlib.Z_FULL_FLUSH)
    return head + block * whole + tail + b"\x03\x00"  # final empty block, fixed Huffman


def pixel_header_explicit(length: int) -> bytes:
    """(7FE0,0010) OW with ``length`` in explicit VR little endian."""
    return struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, length & 0xFFFFFFFF)


def without_pixel_data(ds: Dataset) -> Dataset:
    copy = Dataset(ds)
    del copy.PixelData
    return copy


def element_offsets(data: bytes) -> list[tuple[int, int, int, int]]:
    """(offset, value offset, length, header size) of each top-level element of an explicit VR
    little endian dataset without sequences."""
    out = []
    offset = 0
    long_vrs = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UT", b"UN", b"UC", b"UR"}
    while offset + 8 <= len(data):
        vr = data[offset + 4 : offset + 6]
        if vr in long_vrs:
            (length,) = struct.unpack_from("<I", data, offset + 8)
            header = 12
        else:
            (length,) = struct.unpack_from("<H", data, offset + 6)
            header = 8
        out.append((offset, offset + header, length, header))
        offset += header + length
    return out


# --- cases ---------------------------------------------------------------------------------------
@dataclass
class Step:
    data: bytes
    drip_interval: float = 0.0  # > 0: one byte at a time


@dataclass
class Case:
    name: str
    key: str  # "seed:index", or the seed file's name
    steps: list[Step] = field(default_factory=list)
    associate: bool = False  # send the standard A-ASSOCIATE-RQ first and require the AC
    source: str | None = None
    oracle: str = "reply"  # reply | reject | not-success | failure-status | closed-in-time
    reject: tuple[int, int] | None = None  # (source, reason) an RJ must carry
    statuses: tuple[int, ...] = ()  # failure-status: the allowed ones (empty: any failure)
    sop_instance: bytes = b""  # a stored instance must not appear for refusing oracles
    note: str = ""

    @property
    def pre_association(self) -> bool:
        return not self.associate


@dataclass
class Outcome:
    case: Case
    verdict: str
    replies: list[int] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    reject: tuple[int, int, int] | None = None
    seconds: float = 0.0
    detail: str = ""
    violations: list[str] = field(default_factory=list)

    def describe(self) -> str:
        names = ",".join(PDU_NAMES.get(k, f"0x{k:02X}") for k in self.replies) or "none"
        statuses = ",".join(f"0x{s:04X}" for s in self.statuses)
        text = (
            f"[{self.case.key}] {self.case.name}: {self.verdict} after {self.seconds:.2f}s; "
            f"replies={names}"
        )
        if statuses:
            text += f" statuses={statuses}"
        if self.reject:
            text += f" rj={self.reject}"
        if self.detail:
            text += f" ({self.detail})"
        return text


def _step(data: bytes) -> list[Step]:
    return [Step(data)]


def _sop(rng: random.Random, key: str) -> bytes:
    return uid_for("fuzz-instance", key, rng.random())


def _non_ascii_uid(rng: random.Random, base: bytes) -> bytes:
    raw = bytearray(base)
    for _ in range(rng.randint(1, 3)):
        raw[rng.randrange(len(raw))] = rng.randint(0x80, 0xFF)
    if rng.random() < 0.3:
        raw += "é".encode() if rng.random() < 0.5 else b"\xff\xfe"
    return bytes(raw)


def _long_uid(rng: random.Random) -> bytes:
    size = rng.choice([65, 66, 100, 255, 1000, 4000])
    if rng.random() < 0.5:
        return (b"1.2." + b"9" * size)[:size]
    return bytes(rng.choice(b"0123456789.") for _ in range(size))


def _flip(rng: random.Random, data: bytes, start: int = 0, count: int | None = None) -> bytes:
    raw = bytearray(data)
    if len(raw) <= start:
        return data
    for _ in range(count or rng.randint(1, 8)):
        position = rng.randrange(start, len(raw))
        raw[position] = rng.randrange(256) if rng.random() < 0.7 else raw[position] ^ 0x80
    return bytes(raw)


def _length_value(rng: random.Random, actual: int, bits: int) -> int:
    top = (1 << bits) - 1
    return rng.choice(
        [
            0,
            1,
            2,
            3,
            actual - 1,
            actual + 1,
            actual + rng.randint(2, 5000),
            max(actual - rng.randint(2, 50), 0),
            top,
            top - 1,
            rng.randrange(top),
        ]
    )


# Pre-association: the A-ASSOCIATE-RQ and what comes instead of it.
def rq_pdu_length(rng: random.Random, key: str) -> Case:
    body = AssociateRQ().body()
    length = _length_value(rng, len(body), 32)
    if rng.random() < 0.2:
        length = (1 << 20) + rng.randint(1, 1 << 24)  # over any control PDU limit
    return Case(
        "rq-pdu-length",
        key,
        _step(struct.pack(">BBI", 1, 0, length) + body),
        note=f"length {length} for a body of {len(body)}",
    )


def rq_item_type(rng: random.Random, key: str) -> Case:
    request = AssociateRQ()
    body = bytearray(request.body())
    offsets = _item_offsets(bytes(body))
    position = rng.choice(offsets)
    body[position] = rng.choice(
        [
            0x00,
            0x10,
            0x20,
            0x21,
            0x30,
            0x40,
            0x50,
            0x51,
            0x52,
            0x53,
            0x54,
            0x55,
            0x56,
            0x57,
            0x58,
            0x59,
            0xFF,
            rng.randrange(256),
        ]
    )
    return Case("rq-item-type", key, _step(pdu(A_ASSOCIATE_RQ, bytes(body))))


def _item_offsets(body: bytes) -> list[int]:
    """Offsets of the variable items and of their sub-items in an A-ASSOCIATE-RQ body."""
    out = []
    offset = 68
    while offset + 4 <= len(body):
        kind = body[offset]
        (length,) = struct.unpack_from(">H", body, offset + 2)
        out.append(offset)
        start = offset + 4 + (4 if kind == 0x20 else 0)
        end = offset + 4 + length
        if kind in (0x20, 0x50):
            sub = start
            while sub + 4 <= end:
                out.append(sub)
                (sub_length,) = struct.unpack_from(">H", body, sub + 2)
                sub += 4 + sub_length
        offset = end
    return out


def rq_item_length(rng: random.Random, key: str) -> Case:
    body = bytearray(AssociateRQ().body())
    position = rng.choice(_item_offsets(bytes(body)))
    (length,) = struct.unpack_from(">H", body, position + 2)
    struct.pack_into(">H", body, position + 2, _length_value(rng, length, 16) & 0xFFFF)
    return Case("rq-item-length", key, _step(pdu(A_ASSOCIATE_RQ, bytes(body))))


def rq_protocol_version(rng: random.Random, key: str) -> Case:
    version = rng.choice([0, 2, 3, 0x8000, 0xFFFF, 0xFFFE, rng.randrange(1 << 16)])
    request = AssociateRQ(protocol_version=version)
    if version & 1:
        return Case(
            "rq-protocol-version",
            key,
            _step(request.encode()),
            note=f"version 0x{version:04X} has bit 0: may be accepted",
        )
    # PS3.8 9.3.2: bit 0 is version 1; without it, RJ with source 2, reason 2.
    return Case(
        "rq-protocol-version",
        key,
        _step(request.encode()),
        oracle="reject",
        reject=(2, 2),
        note=f"version 0x{version:04X}",
    )


def rq_non_ascii_uid(rng: random.Random, key: str) -> Case:
    request = AssociateRQ()
    target = rng.choice(["application", "abstract", "transfer", "implementation", "all-transfer"])
    index = rng.randrange(len(request.contexts))
    context_id, abstract, transfers = request.contexts[index]
    if target == "application":
        request.application_context = _non_ascii_uid(rng, APPLICATION_CONTEXT)
    elif target == "abstract":
        request.contexts[index] = (context_id, _non_ascii_uid(rng, abstract), transfers)
    elif target == "transfer":
        request.contexts[index] = (context_id, abstract, [_non_ascii_uid(rng, transfers[0])])
    elif target == "all-transfer":
        request.contexts = [(c, a, [_non_ascii_uid(rng, t[0])]) for c, a, t in request.contexts]
    else:
        request.implementation_uid = _non_ascii_uid(rng, OUR_IMPLEMENTATION_UID)
    return Case("rq-non-ascii-uid", key, _step(request.encode()), note=target)


def rq_long_uid(rng: random.Random, key: str) -> Case:
    request = AssociateRQ()
    target = rng.choice(["application", "abstract", "transfer", "implementation"])
    index = rng.randrange(len(request.contexts))
    context_id, abstract, transfers = request.contexts[index]
    value = _long_uid(rng)
    if target == "application":
        request.application_context = value
    elif target == "abstract":
        request.contexts[index] = (context_id, value, transfers)
    elif target == "transfer":
        request.contexts[index] = (context_id, abstract, [value, *transfers])
    else:
        request.implementation_uid = value
    return Case("rq-long-uid", key, _step(request.encode()), note=f"{target} {len(value)}")


def rq_truncated(rng: random.Random, key: str) -> Case:
    encoded = AssociateRQ().encode()
    cut = rng.randrange(1, len(encoded))
    if rng.random() < 0.5:
        # the header still announces the whole body: the node must wait, then give up in time
        return Case("rq-truncated", key, _step(encoded[:cut]), note=f"cut at {cut}")
    body = encoded[6:cut] if cut > 6 else b""
    return Case(
        "rq-truncated-consistent",
        key,
        _step(pdu(A_ASSOCIATE_RQ, body)),
        note=f"body cut to {len(body)}",
    )


def rq_flip(rng: random.Random, key: str) -> Case:
    encoded = AssociateRQ().encode()
    return Case("rq-flip", key, _step(_flip(rng, encoded, start=6)))


def rq_ae_titles(rng: random.Random, key: str) -> Case:
    choices = [
        b" " * 16,
        b"\x00" * 16,
        b"\xff" * 16,
        "MÜLLER".encode("latin-1").ljust(16),
        "ÉTÉ".encode().ljust(16),
        b"IQTNODE\x00\x00\x00\x00\x00\x00\x00\x00\x00",
        b"\\\\\\\\".ljust(16),
        bytes(rng.randrange(256) for _ in range(16)),
    ]
    request = AssociateRQ()
    if rng.random() < 0.5:
        request.called = rng.choice(choices)
    else:
        request.calling = rng.choice(choices)
    return Case("rq-ae-titles", key, _step(request.encode()))


def rq_contexts(rng: random.Random, key: str) -> Case:
    request = AssociateRQ()
    variant = rng.choice(
        [
            "many",
            "id-zero",
            "id-even",
            "duplicate",
            "no-transfer",
            "no-abstract",
            "empty-uids",
            "none",
        ]
    )
    if variant == "many":
        count = rng.choice([127, 128, 129, 200, 300])
        request.contexts = [
            ((2 * i + 1) & 0xFF, MR_IMAGE_STORAGE, [EXPLICIT_LE]) for i in range(count)
        ]
    elif variant == "id-zero":
        request.contexts[0] = (0, *request.contexts[0][1:])
    elif variant == "id-even":
        request.contexts[1] = (rng.choice([2, 4, 254]), *request.contexts[1][1:])
    elif variant == "duplicate":
        request.contexts.append(request.contexts[1])
    elif variant == "no-transfer":
        request.contexts[1] = (request.contexts[1][0], request.contexts[1][1], [])
    elif variant == "no-abstract":
        request.contexts[1] = (request.contexts[1][0], b"", request.contexts[1][2])
    elif variant == "empty-uids":
        request.contexts[1] = (request.contexts[1][0], b"\x00" * 4, [b" " * 6])
    else:
        request.contexts = []
    return Case("rq-contexts", key, _step(request.encode()), note=variant)


def rq_user_information(rng: random.Random, key: str) -> Case:
    request = AssociateRQ()
    variant = rng.choice(
        [
            "max-length-size",
            "max-length-value",
            "no-version",
            "unknown-sub",
            "role-selection",
            "async-ops",
            "user-identity",
            "ext-negotiation",
            "no-user-item",
            "sub-item-overrun",
        ]
    )
    if variant == "max-length-size":
        request.maximum_length = bytes(rng.choice([0, 1, 2, 3, 5, 8]))
    elif variant == "max-length-value":
        request.maximum_length = struct.pack(">I", rng.choice([0, 1, 2, 6, 7, 8, 0xFFFFFFFF]))
    elif variant == "no-version":
        request.implementation_version = None
    elif variant == "unknown-sub":
        request.extra_user_items.append(
            item(rng.randrange(0x56, 0x100), b"\x01" * rng.randint(0, 9))
        )
    elif variant == "role-selection":
        uid = rng.choice([MR_IMAGE_STORAGE, b"", _non_ascii_uid(rng, MR_IMAGE_STORAGE)])
        value = struct.pack(">H", rng.choice([len(uid), len(uid) + 9, 0xFFFF])) + uid
        request.extra_user_items.append(item(0x54, value + bytes(rng.randint(0, 3))))
    elif variant == "async-ops":
        request.extra_user_items.append(item(0x53, bytes(rng.choice([0, 2, 4, 6]))))
    elif variant == "user-identity":
        value = bytes((rng.randint(0, 6), 1)) + struct.pack(">H", 0xFFFF) + b"user"
        request.extra_user_items.append(item(0x58, value))
    elif variant == "ext-negotiation":
        request.extra_user_items.append(item(0x56, struct.pack(">H", 500) + MR_IMAGE_STORAGE))
    elif variant == "no-user-item":
        body = bytearray(request.body())
        user = request.user_item()
        encoded = bytes(body[: len(body) - len(user)])
        return Case("rq-user-information", key, _step(pdu(A_ASSOCIATE_RQ, encoded)), note=variant)
    else:
        request.extra_user_items.append(struct.pack(">BBH", 0x52, 0, 400) + b"1.2")
    return Case("rq-user-information", key, _step(request.encode()), note=variant)


def wrong_first_pdu(rng: random.Random, key: str) -> Case:
    variant = rng.choice(
        [
            "p-data",
            "release-rq",
            "release-rp",
            "abort",
            "ac",
            "rj",
            "unknown",
            "empty",
            "reserved-byte",
        ]
    )
    if variant == "p-data":
        data = p_data(pdv(1, 3, encode_command(echo_command())))
    elif variant == "release-rq":
        data = release_rq()
    elif variant == "release-rp":
        data = pdu(A_RELEASE_RP, bytes(4))
    elif variant == "abort":
        data = abort_rq()
    elif variant == "ac":
        data = pdu(A_ASSOCIATE_AC, AssociateRQ().body())
    elif variant == "rj":
        data = pdu(A_ASSOCIATE_RJ, b"\x00\x01\x01\x01")
    elif variant == "unknown":
        data = pdu(
            rng.choice([0x00, 0x08, 0x09, 0x10, 0x7F, 0x80, 0xFF]), bytes(rng.randint(0, 40))
        )
    elif variant == "empty":
        data = pdu(A_ASSOCIATE_RQ, b"")
    else:
        data = pdu(A_ASSOCIATE_RQ, AssociateRQ().body(), reserved=rng.randint(1, 255))
    return Case("wrong-first-pdu", key, _step(data), note=variant)


def garbage(rng: random.Random, key: str) -> Case:
    size = rng.choice([1, 5, 6, 7, 64, 512, 4096, 70000])
    data = bytes(rng.randrange(256) for _ in range(min(size, 4096)))
    data = (data * (size // len(data) + 1))[:size]
    return Case("garbage", key, _step(data), note=f"{size} bytes")


def rq_then_junk(rng: random.Random, key: str) -> Case:
    junk = rng.choice(
        [
            b"\x00",
            b"\x04\x00\x00",
            bytes(rng.randrange(256) for _ in range(40)),
            AssociateRQ().encode(),
        ]
    )
    return Case(
        "rq-then-junk",
        key,
        _step(AssociateRQ().encode() + junk),
        note=f"{len(junk)} bytes after the RQ",
    )


def refused_source(rng: random.Random, key: str) -> Case:
    request = AssociateRQ()
    if rng.random() < 0.3:
        request.protocol_version = 0
    return Case(
        "refused-source",
        key,
        _step(request.encode()),
        source=REFUSED_SOURCE,
        oracle="reject",
        note="source address outside source_networks",
    )


# After association: P-DATA, command sets, datasets.
def _store_parts(
    rng: random.Random, key: str, implicit: bool = False
) -> tuple[bytes, bytes, bytes]:
    sop = _sop(rng, key)
    command = encode_command(store_command(sop, rng.randint(1, 0xFFFF)))
    dataset = encode_dataset(mr_dataset(sop), implicit=implicit)
    return sop, command, dataset


def pdata_pdv_length(rng: random.Random, key: str) -> Case:
    _, command, dataset = _store_parts(rng, key)
    target = rng.choice(["command", "dataset"])
    data = command if target == "command" else dataset
    length = _length_value(rng, len(data) + 2, 32)
    bad = p_data(pdv(CTX_MR_EXPLICIT, 0x03 if target == "command" else 0x02, data, length))
    if target == "dataset":
        bad = p_data(pdv(CTX_MR_EXPLICIT, 0x03, command)) + bad
    return Case(
        "pdata-pdv-length",
        key,
        _step(bad),
        associate=True,
        note=f"{target} item length {length} for {len(data) + 2}",
    )


def pdata_pdu_length(rng: random.Random, key: str) -> Case:
    _, command, _ = _store_parts(rng, key)
    body = pdv(CTX_ECHO, 0x03, encode_command(echo_command()))
    if rng.random() < 0.5:
        body = pdv(CTX_MR_EXPLICIT, 0x03, command)
    length = _length_value(rng, len(body), 32)
    if rng.random() < 0.3:
        length = 64 * 2**20 + rng.randint(0, 2**20)  # a 64 MiB P-DATA announced, few bytes sent
    return Case(
        "pdata-pdu-length",
        key,
        _step(struct.pack(">BBI", 4, 0, length) + body),
        associate=True,
        note=f"length {length} for {len(body)}",
    )


def pdata_control(rng: random.Random, key: str) -> Case:
    sop, command, dataset = _store_parts(rng, key)
    variant = rng.choice(
        [
            "random-bits",
            "dataset-first",
            "command-twice",
            "no-last",
            "dataset-as-command",
            "multi-pdv",
            "empty-pdu",
            "empty-fragment",
        ]
    )
    if variant == "random-bits":
        control = rng.randrange(4, 256)
        data = p_data(pdv(CTX_MR_EXPLICIT, control, command))
    elif variant == "dataset-first":
        data = p_data(pdv(CTX_MR_EXPLICIT, 0x02, dataset))
    elif variant == "command-twice":
        data = p_data(pdv(CTX_MR_EXPLICIT, 0x03, command), pdv(CTX_MR_EXPLICIT, 0x03, command))
    elif variant == "no-last":
        data = p_data(pdv(CTX_MR_EXPLICIT, 0x01, command))  # the node must wait, then give up
    elif variant == "dataset-as-command":
        data = p_data(pdv(CTX_MR_EXPLICIT, 0x03, dataset))
    elif variant == "multi-pdv":
        half = len(dataset) // 2
        data = p_data(
            pdv(CTX_MR_EXPLICIT, 0x03, command),
            pdv(CTX_MR_EXPLICIT, 0x00, dataset[:half]),
            pdv(CTX_MR_EXPLICIT, 0x02, dataset[half:]),
        )
    elif variant == "empty-pdu":
        data = pdu(P_DATA_TF, b"")
    else:
        data = p_data(pdv(CTX_MR_EXPLICIT, 0x03, command), pdv(CTX_MR_EXPLICIT, 0x02, b""))
    return Case(
        "pdata-control",
        key,
        _step(data),
        associate=True,
        note=variant,
        sop_instance=sop if variant == "empty-fragment" else b"",
        oracle="not-success" if variant == "empty-fragment" else "reply",
    )


def pdata_context(rng: random.Random, key: str) -> Case:
    sop, command, dataset = _store_parts(rng, key)
    context = rng.choice([0, 2, CTX_UNKNOWN, 13, 255])
    variant = rng.choice(["both", "dataset"])
    if variant == "both":
        data = message(context, command, dataset)
    else:
        data = p_data(pdv(CTX_MR_EXPLICIT, 0x03, command), pdv(context, 0x02, dataset))
    return Case(
        "pdata-context",
        key,
        _step(data),
        associate=True,
        oracle="not-success",
        sop_instance=sop,
        note=f"context {context} ({variant})",
    )


def command_missing(rng: random.Random, key: str) -> Case:
    sop = _sop(rng, key)
    elements = store_command(sop)
    dropped = rng.choice([None, *[tag for tag, _ in elements]])
    if dropped is not None:
        elements = [(t, v) for t, v in elements if t != dropped]
    group_length = dropped is not None or rng.random() < 0.5
    dataset = encode_dataset(mr_dataset(sop), implicit=False)
    data = message(CTX_MR_EXPLICIT, encode_command(elements, group_length), dataset)
    # Without the SOP class, instance, command field or message id, nothing may be stored.
    refusing = dropped in (0x0002, 0x0100, 0x0110, 0x1000)
    note = f"without (0000,{dropped:04X})" if dropped is not None else "without group length"
    return Case(
        "command-missing",
        key,
        _step(data),
        associate=True,
        oracle="not-success" if refusing else "reply",
        sop_instance=sop if refusing else b"",
        note=note,
    )


def command_wrong(rng: random.Random, key: str) -> Case:
    sop = _sop(rng, key)
    elements = dict(store_command(sop))
    variant = rng.choice(
        [
            "field",
            "us-size",
            "sop-class",
            "instance-non-ascii",
            "instance-long",
            "class-non-ascii",
            "no-dataset-flag",
            "echo-with-dataset",
            "message-id-zero",
            "error-comment",
            "odd-tag",
            "cancel",
        ]
    )
    dataset: bytes | None = encode_dataset(mr_dataset(sop), implicit=False)
    oracle = "reply"
    if variant == "field":
        elements[0x0100] = us(
            rng.choice(
                [
                    0x0000,
                    0x0010,
                    0x0020,
                    0x0021,
                    0x8001,
                    0x0FFF,
                    0x0120,
                    0xFFFF,
                    rng.randrange(1 << 16),
                ]
            )
        )
    elif variant == "us-size":
        tag = rng.choice([0x0100, 0x0110, 0x0800, 0x0700])
        elements[tag] = rng.choice([b"", b"\x01", b"\x01\x00\x00\x00", b"\x01\x00\x00"])
        oracle = "not-success" if tag in (0x0100, 0x0110) else "reply"
    elif variant == "sop-class":
        elements[0x0002] = rng.choice([CT_IMAGE_STORAGE, VERIFICATION, b"1.2.3"])
        oracle = "not-success"
    elif variant == "instance-non-ascii":
        elements[0x1000] = _non_ascii_uid(rng, sop)
        oracle = "not-success"
    elif variant == "instance-long":
        elements[0x1000] = _long_uid(rng)
        oracle = "not-success"
    elif variant == "class-non-ascii":
        elements[0x0002] = _non_ascii_uid(rng, MR_IMAGE_STORAGE)
        oracle = "not-success"
    elif variant == "no-dataset-flag":
        elements[0x0800] = us(0x0101)
        oracle = "not-success"  # a C-STORE without a dataset; the dataset then comes unasked
    elif variant == "echo-with-dataset":
        elements = dict(echo_command())
        elements[0x0800] = us(0x0000)
    elif variant == "message-id-zero":
        elements[0x0110] = us(0)
    elif variant == "error-comment":
        elements[0x0902] = bytes(rng.randrange(256) for _ in range(rng.choice([1, 64, 1000])))
    elif variant == "odd-tag":
        elements[rng.choice([0x0001, 0x0003, 0x5010, 0xFFFE])] = b"\x00" * rng.randint(0, 9)
    else:
        elements = {0x0100: us(0x0FFF), 0x0120: us(1), 0x0800: us(0x0101)}
        dataset = None
    ordered = sorted(elements.items()) if rng.random() < 0.8 else list(elements.items())
    data = message(CTX_MR_EXPLICIT, encode_command(ordered), dataset)
    if variant == "cancel":  # no response to a C-CANCEL: follow with a C-ECHO that needs one
        data += message(CTX_ECHO, encode_command(echo_command(2)), None)
    return Case(
        "command-wrong",
        key,
        _step(data),
        associate=True,
        oracle=oracle,
        sop_instance=sop if oracle != "reply" else b"",
        note=variant,
    )


def command_flip(rng: random.Random, key: str) -> Case:
    sop, command, dataset = _store_parts(rng, key)
    data = message(CTX_MR_EXPLICIT, _flip(rng, command, start=12), dataset)
    return Case("command-flip", key, _step(data), associate=True)


def dataset_flip(rng: random.Random, key: str) -> Case:
    sop, command, dataset = _store_parts(rng, key, implicit=rng.random() < 0.3)
    context = CTX_MR_EXPLICIT
    if dataset[4:6] not in (b"CS", b"UI"):  # implicit: written without VRs
        context = CTX_MR_IMPLICIT
    data = message(context, command, _flip(rng, dataset))
    return Case("dataset-flip", key, _step(data), associate=True)


def dataset_length(rng: random.Random, key: str) -> Case:
    sop, command, dataset = _store_parts(rng, key)
    raw = bytearray(dataset)
    offset, _, length, header = rng.choice(element_offsets(dataset))
    if header == 12:
        value = _length_value(rng, length, 32)
        struct.pack_into("<I", raw, offset + 8, value & 0xFFFFFFFF)
    else:
        value = _length_value(rng, length, 16)
        struct.pack_into("<H", raw, offset + 6, value & 0xFFFF)
    return Case(
        "dataset-length",
        key,
        _step(message(CTX_MR_EXPLICIT, command, bytes(raw))),
        associate=True,
        note=f"element at {offset}: {length} -> {value}",
    )


def dataset_vr(rng: random.Random, key: str) -> Case:
    sop, command, dataset = _store_parts(rng, key)
    raw = bytearray(dataset)
    offset, *_ = rng.choice(element_offsets(dataset))
    vr = rng.choice(
        [
            b"SQ",
            b"UN",
            b"OB",
            b"US",
            b"UL",
            b"FD",
            b"AT",
            b"??",
            b"\x00\x00",
            bytes((rng.randrange(256), rng.randrange(256))),
        ]
    )
    raw[offset + 4 : offset + 6] = vr
    return Case(
        "dataset-vr",
        key,
        _step(message(CTX_MR_EXPLICIT, command, bytes(raw))),
        associate=True,
        note=f"element at {offset} as {vr!r}",
    )


def dataset_truncated(rng: random.Random, key: str) -> Case:
    sop, command, dataset = _store_parts(rng, key)
    pixel_value = element_offsets(dataset)[-1][1]
    cut = rng.randrange(pixel_value + 1, len(dataset))  # inside the PixelData value
    return Case(
        "dataset-truncated",
        key,
        _step(message(CTX_MR_EXPLICIT, command, dataset[:cut])),
        associate=True,
        oracle="not-success",
        sop_instance=sop,
        note=f"cut at {cut} of {len(dataset)}",
    )


def dataset_junk_after(rng: random.Random, key: str) -> Case:
    sop, command, dataset = _store_parts(rng, key)
    junk = bytes(rng.randrange(256) for _ in range(rng.choice([1, 3, 7, 8, 100])))
    return Case(
        "dataset-junk-after",
        key,
        _step(message(CTX_MR_EXPLICIT, command, dataset + junk)),
        associate=True,
        note=f"{len(junk)} bytes",
    )


def dataset_implicit_on_explicit(rng: random.Random, key: str) -> Case:
    sop, command, _ = _store_parts(rng, key)
    dataset = encode_dataset(mr_dataset(sop), implicit=True)
    return Case(
        "dataset-implicit-on-explicit",
        key,
        _step(message(CTX_MR_EXPLICIT, command, dataset)),
        associate=True,
        oracle="not-success",
        sop_instance=sop,
    )


def dataset_part10_meta(rng: random.Random, key: str) -> Case:
    sop, command, dataset = _store_parts(rng, key)
    syntax = rng.choice([b"garbage", IMPLICIT_LE, b"1.2.840.10008.1.2.2", EXPLICIT_LE])
    return Case(
        "dataset-part10-meta",
        key,
        _step(message(CTX_MR_EXPLICIT, command, part10_meta(syntax, sop) + dataset)),
        associate=True,
        oracle="not-success",
        sop_instance=sop,
        note=f"TransferSyntaxUID {syntax!r}",
    )


def part10_meta(syntax: bytes, sop: bytes) -> bytes:
    """File meta elements (group 0002, explicit VR) as they would start a dataset."""

    def meta(tag: int, vr: bytes, value: bytes) -> bytes:
        if len(value) % 2:
            value += b"\x00"
        if vr == b"OB":
            return struct.pack("<HH2sHI", 2, tag, vr, 0, len(value)) + value
        return struct.pack("<HH2sH", 2, tag, vr, len(value)) + value

    elements = (
        meta(0x0001, b"OB", b"\x00\x01")
        + meta(0x0002, b"UI", MR_IMAGE_STORAGE)
        + meta(0x0003, b"UI", sop)
        + meta(0x0010, b"UI", syntax)
    )
    return meta(0x0000, b"UL", struct.pack("<I", len(elements))) + elements


def dataset_deflated_garbage(rng: random.Random, key: str) -> Case:
    sop, command, dataset = _store_parts(rng, key)
    variant = rng.choice(
        ["random", "deflated-random", "truncated", "small-bomb", "zlib-header", "valid-then-junk"]
    )
    oracle = "not-success"
    if variant == "random":
        data = bytes(rng.randrange(256) for _ in range(rng.choice([1, 10, 1000, 20000])))
    elif variant == "deflated-random":
        data = deflate(bytes(rng.randrange(256) for _ in range(2000)))
    elif variant == "truncated":
        whole = deflate(dataset)
        data = whole[: rng.randrange(1, len(whole))]
    elif variant == "small-bomb":  # inflates to more than the test's max_dataset_mb
        data = deflate_bomb(
            without_pixel_data_bytes(sop) + pixel_header_explicit(24 * 2**20), 24 * 2**20
        )
    elif variant == "zlib-header":
        data = zlib.compress(dataset)  # zlib framing, not raw deflate
    else:
        data = deflate(dataset) + bytes(rng.randrange(256) for _ in range(16))
        oracle = "reply"  # trailing bytes after the final block: implementations differ
    return Case(
        "dataset-deflated-garbage",
        key,
        _step(message(CTX_MR_DEFLATED, command, data)),
        associate=True,
        oracle=oracle,
        sop_instance=sop if oracle != "reply" else b"",
        note=variant,
    )


def without_pixel_data_bytes(sop: bytes) -> bytes:
    return encode_dataset(without_pixel_data(mr_dataset(sop)), implicit=False)


def dataset_nested(rng: random.Random, key: str) -> Case:
    """Sequences nested deeper than any real object, in undefined or wrong lengths."""
    sop, command, _ = _store_parts(rng, key)
    depth = rng.choice([50, 500, 5000])
    item_start = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    item_end = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    seq_start = struct.pack("<HH2sHI", 0x0008, 0x1140, b"SQ", 0, 0xFFFFFFFF)
    seq_end = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    nested = (seq_start + item_start) * depth + (item_end + seq_end) * depth
    if rng.random() < 0.5:
        nested = nested[: rng.randrange(len(nested))]  # delimiters missing
    head = without_pixel_data_bytes(sop)
    offsets = element_offsets(head)
    split = next(
        (o for o, *_ in offsets if struct.unpack_from("<HH", head, o) > (0x0008, 0x1140)), len(head)
    )
    dataset = head[:split] + nested + head[split:]
    return Case(
        "dataset-nested",
        key,
        _step(message(CTX_MR_EXPLICIT, command, dataset)),
        associate=True,
        note=f"depth {depth}",
    )


def dataset_oversized(
    rng: random.Random, key: str, megabytes: int | None = None, fragment: int | None = None
) -> Case:
    """A dataset larger than the test's max_dataset_mb: refused, and never held whole."""
    sop = _sop(rng, key)
    size = (megabytes or rng.choice([12, 20])) * 2**20
    command = encode_command(store_command(sop))
    head = without_pixel_data_bytes(sop) + pixel_header_explicit(size)
    data = message(
        CTX_MR_EXPLICIT,
        command,
        head + bytes(size),
        fragment=fragment or rng.choice([16384, 65536, 1 << 20]),
    )
    return Case(
        "dataset-oversized",
        key,
        _step(data),
        associate=True,
        oracle="failure-status",
        statuses=(0xA700, 0xC000),
        sop_instance=sop,
        note=f"{size >> 20} MiB",
    )


def release_odd(rng: random.Random, key: str) -> Case:
    sop, command, dataset = _store_parts(rng, key)
    variant = rng.choice(
        ["release-mid-dataset", "release-body", "second-rq", "abort-body", "release-rp", "ac"]
    )
    if variant == "release-mid-dataset":
        data = (
            p_data(pdv(CTX_MR_EXPLICIT, 0x03, command), pdv(CTX_MR_EXPLICIT, 0x00, dataset[:20]))
            + release_rq()
        )
    elif variant == "release-body":
        data = pdu(A_RELEASE_RQ, bytes(rng.choice([0, 2, 8, 100])))
    elif variant == "second-rq":
        data = AssociateRQ().encode()
    elif variant == "abort-body":
        data = pdu(A_ABORT, bytes(rng.choice([0, 2, 8])))
    elif variant == "release-rp":
        data = pdu(A_RELEASE_RP, bytes(4))
    else:
        data = pdu(A_ASSOCIATE_AC, AssociateRQ().body())
    return Case("release-odd", key, _step(data), associate=True, note=variant)


def valid_store(rng: random.Random, key: str) -> Case:
    """A control: a valid store and an echo on the same association must succeed."""
    sop, command, dataset = _store_parts(rng, key, implicit=rng.random() < 0.5)
    context = CTX_MR_EXPLICIT if dataset[4:6] in (b"CS", b"UI") else CTX_MR_IMPLICIT
    if rng.random() < 0.3:
        context, dataset = CTX_MR_DEFLATED, deflate(encode_dataset(mr_dataset(sop), False))
    data = message(context, command, dataset, fragment=rng.choice([7, 100, 16384]))
    return Case(
        "valid-store",
        key,
        _step(data),
        associate=True,
        oracle="failure-status",
        statuses=(SUCCESS,),
        note=f"context {context}",
    )


# Slow and idle peers.
def idle(rng: random.Random, key: str) -> Case:
    return Case("idle", key, [], oracle="closed-in-time", note="connects, sends nothing")


def slow_drip_rq(rng: random.Random, key: str) -> Case:
    interval = rng.choice([0.1, 0.25, 0.5])
    return Case(
        "slow-drip-rq",
        key,
        [Step(AssociateRQ().encode(), interval)],
        oracle="closed-in-time",
        note=f"a byte every {interval}s",
    )


def idle_associated(rng: random.Random, key: str) -> Case:
    return Case("idle-associated", key, [], associate=True, oracle="closed-in-time")


def slow_drip_pdata(rng: random.Random, key: str) -> Case:
    sop, command, dataset = _store_parts(rng, key)
    interval = rng.choice([0.1, 0.3])
    return Case(
        "slow-drip-pdata",
        key,
        [Step(message(CTX_MR_EXPLICIT, command, dataset), interval)],
        associate=True,
        oracle="closed-in-time",
        note=f"a byte every {interval}s",
    )


def half_then_idle(rng: random.Random, key: str) -> Case:
    encoded = AssociateRQ().encode()
    return Case(
        "half-rq-then-idle", key, _step(encoded[: rng.randrange(1, 6)]), oracle="closed-in-time"
    )


MUTATIONS: list[tuple[Callable[[random.Random, str], Case], float]] = [
    (rq_pdu_length, 3),
    (rq_item_type, 4),
    (rq_item_length, 4),
    (rq_protocol_version, 3),
    (rq_non_ascii_uid, 5),
    (rq_long_uid, 3),
    (rq_truncated, 3),
    (rq_flip, 6),
    (rq_ae_titles, 2),
    (rq_contexts, 3),
    (rq_user_information, 4),
    (wrong_first_pdu, 3),
    (garbage, 2),
    (rq_then_junk, 2),
    (refused_source, 1),
    (pdata_pdv_length, 4),
    (pdata_pdu_length, 3),
    (pdata_control, 4),
    (pdata_context, 2),
    (command_missing, 4),
    (command_wrong, 6),
    (command_flip, 5),
    (dataset_flip, 6),
    (dataset_length, 5),
    (dataset_vr, 4),
    (dataset_truncated, 2),
    (dataset_junk_after, 2),
    (dataset_implicit_on_explicit, 2),
    (dataset_part10_meta, 2),
    (dataset_deflated_garbage, 4),
    (dataset_nested, 2),
    (dataset_oversized, 0.5),
    (release_odd, 3),
    (valid_store, 3),
    (idle, 0.5),
    (slow_drip_rq, 0.5),
    (idle_associated, 0.5),
    (slow_drip_pdata, 0.5),
    (half_then_idle, 0.5),
]


def make_case(seed: int, index: int) -> Case:
    """The ``index``-th case of a run with ``seed``: the same on every machine and run."""
    rng = random.Random(f"wirefuzz:{seed}:{index}")
    functions, weights = zip(*MUTATIONS, strict=True)
    mutation = rng.choices(functions, weights)[0]
    return mutation(rng, f"{seed}:{index}")


# --- JSON seeds ----------------------------------------------------------------------------------
SEED_BYTES_LIMIT = 64 * 1024  # bigger cases are kept as (seed, index) to regenerate


def case_to_json(case: Case, defect: str = "") -> dict[str, object]:
    if sum(len(step.data) for step in case.steps) > SEED_BYTES_LIMIT and ":" in case.key:
        seed, index = case.key.split(":")
        return {
            "name": case.name,
            "found_by": case.key,
            "defect": defect,
            "note": case.note,
            "fuzz": [int(seed), int(index)],
        }
    return {
        "name": case.name,
        "found_by": case.key,
        "defect": defect,
        "note": case.note,
        "associate": case.associate,
        "source": case.source,
        "oracle": case.oracle,
        "reject": list(case.reject) if case.reject else None,
        "statuses": list(case.statuses),
        "sop_instance": case.sop_instance.decode("latin-1"),
        "steps": [{"hex": s.data.hex(), "drip_interval": s.drip_interval} for s in case.steps],
    }


BUILDERS: dict[str, Callable[..., Case]] = {}


def builder(function: Callable[..., Case]) -> Callable[..., Case]:
    BUILDERS[function.__name__] = function
    return function


@builder
def build_deflate_bomb(key: str, inflated_mb: int = 1024) -> Case:
    """A C-STORE on the deflated context whose ~1 MB inflates to ``inflated_mb`` MiB."""
    sop = uid_for("seed", key)
    size = inflated_mb * 2**20
    head = without_pixel_data_bytes(sop) + pixel_header_explicit(size)
    data = deflate_bomb(head, size)
    command = encode_command(store_command(sop))
    return Case(
        "deflate-bomb",
        key,
        _step(message(CTX_MR_DEFLATED, command, data, 65536)),
        associate=True,
        oracle="failure-status",
        statuses=(0xA700, 0xC000),
        sop_instance=sop,
        note=f"{len(data)} bytes deflated, {inflated_mb} MiB inflated",
    )


@builder
def build_oversized(key: str, megabytes: int = 64, fragment: int = 65536) -> Case:
    return dataset_oversized(random.Random(key), key, megabytes, fragment)


@builder
def build_implicit_on_explicit(key: str) -> Case:
    return dataset_implicit_on_explicit(random.Random(key), key)


@builder
def build_part10_meta(key: str, syntax: str = "garbage") -> Case:
    sop = uid_for("seed", key)
    command = encode_command(store_command(sop))
    dataset = part10_meta(syntax.encode(), sop) + encode_dataset(mr_dataset(sop), implicit=False)
    return Case(
        "dataset-part10-meta",
        key,
        _step(message(CTX_MR_EXPLICIT, command, dataset)),
        associate=True,
        oracle="failure-status",
        sop_instance=sop,
        note=f"TransferSyntaxUID {syntax!r} inside the dataset",
    )


@builder
def build_protocol_version(key: str, version: int) -> Case:
    return Case(
        "rq-protocol-version",
        key,
        _step(AssociateRQ(protocol_version=version).encode()),
        oracle="reject",
        reject=(2, 2),
        note=f"version {version}",
    )


@builder
def build_non_ascii_transfer_syntax(key: str, everywhere: bool = False) -> Case:
    request = AssociateRQ()
    bad = "1.2.840.10008.1.2.1é".encode()
    if everywhere:
        request.contexts = [(c, a, [bad]) for c, a, _ in request.contexts]
    else:
        context_id, abstract, _ = request.contexts[1]
        request.contexts[1] = (context_id, abstract, [bad])
    return Case(
        "rq-non-ascii-transfer-syntax",
        key,
        _step(request.encode()),
        note="everywhere" if everywhere else "one context",
    )


@builder
def build_non_ascii_sop_instance(key: str) -> Case:
    sop = uid_for("seed", key)
    elements = dict(store_command(sop))
    elements[0x1000] = sop[:-2] + "é".encode()
    dataset = encode_dataset(mr_dataset(sop), implicit=False)
    data = message(CTX_MR_EXPLICIT, encode_command(sorted(elements.items())), dataset)
    return Case(
        "command-non-ascii-instance",
        key,
        _step(data),
        associate=True,
        oracle="not-success",
        sop_instance=sop,
    )


@builder
def build_slow_drip(key: str, interval: float = 0.25, associate: bool = False) -> Case:
    """A valid A-ASSOCIATE-RQ (or, associated, a C-ECHO) a byte every ``interval`` seconds: each
    read is quick, the whole PDU is not; the node must let go at its deadline."""
    if associate:
        data = message(CTX_ECHO, encode_command(echo_command()), None)
    else:
        data = standard_request()
    return Case(
        "slow-drip",
        key,
        [Step(data, interval)],
        associate=associate,
        oracle="closed-in-time",
        note=f"a byte every {interval}s",
    )


def case_from_json(key: str, spec: dict) -> Case:
    if "fuzz" in spec:
        case = make_case(*spec["fuzz"])
        case.key = f"{key} ({case.key})"
        return case
    if "build" in spec:
        case = BUILDERS[spec["build"]](key, **spec.get("args", {}))
    else:
        case = Case(
            spec["name"],
            key,
            [Step(bytes.fromhex(s["hex"]), s.get("drip_interval", 0.0)) for s in spec["steps"]],
            associate=spec.get("associate", False),
            source=spec.get("source"),
            oracle=spec.get("oracle", "reply"),
            reject=tuple(spec["reject"]) if spec.get("reject") else None,  # type: ignore[arg-type]
            statuses=tuple(spec.get("statuses", ())),
            sop_instance=spec.get("sop_instance", "").encode("latin-1"),
            note=spec.get("note", ""),
        )
    for name in ("oracle", "source"):
        if name in spec and "build" in spec:
            setattr(case, name, spec[name])
    if "statuses" in spec and "build" in spec:
        case.statuses = tuple(spec["statuses"])
    if "reject" in spec and "build" in spec and spec["reject"]:
        case.reject = tuple(spec["reject"])  # type: ignore[assignment]
    return case


def load_seeds(folder: Path) -> list[tuple[str, dict]]:
    return [(path.stem, json.loads(path.read_text())) for path in sorted(folder.glob("*.json"))]


# --- the connection ------------------------------------------------------------------------------
class Wire:
    """One TCP connection to the node, with the PDUs it sends back and when it closed."""

    def __init__(self, port: int, source: str | None = None, connect_timeout: float = 10.0):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if source:
            self.sock.bind((source, 0))
        self.sock.settimeout(connect_timeout)
        self.sock.connect(("127.0.0.1", port))
        self.sock.setblocking(False)
        self.connected_at = time.monotonic()
        self.last_sent = self.connected_at
        self.last_heard = self.connected_at  # the node's last PDU (or connect)
        self.buffer = bytearray()
        self.pdus: list[tuple[float, int, bytes]] = []
        self.closed: str | None = None  # "eof" or "reset"
        self.closed_at: float | None = None
        self.garbled: str | None = None

    def _pump(self, wait: float) -> None:
        """Read what is there (waiting up to ``wait`` for something) and cut it into PDUs."""
        if self.closed:
            return
        readable, _, _ = select.select([self.sock], [], [], max(wait, 0))
        if not readable:
            return
        try:
            chunk = self.sock.recv(1 << 20)
        except (BlockingIOError, InterruptedError):
            return
        except ConnectionResetError:
            self._close_seen("reset")
            return
        except OSError:
            self._close_seen("reset")
            return
        if not chunk:
            self._close_seen("eof")
            return
        self.buffer += chunk
        while len(self.buffer) >= 6:
            kind, length = struct.unpack_from(">BxI", self.buffer)
            if kind not in REPLY_TYPES or length > 1 << 20:
                self.garbled = f"PDU type 0x{kind:02X} of {length} bytes"
                self.buffer.clear()
                return
            if len(self.buffer) < 6 + length:
                return
            body = bytes(self.buffer[6 : 6 + length])
            del self.buffer[: 6 + length]
            now = time.monotonic()
            self.pdus.append((now, kind, body))
            self.last_heard = now

    @property
    def ended(self) -> bool:
        """The node closed, or sent a PDU after which nothing more of ours is read."""
        return bool(self.closed) or any(kind in TERMINAL_TYPES for _, kind, _ in self.pdus)

    def _close_seen(self, how: str) -> None:
        self.closed = how
        self.closed_at = time.monotonic()

    def send(self, data: bytes, deadline: float) -> bool:
        """Send all of ``data`` unless the node closes or ``deadline`` passes; False then."""
        view = memoryview(data)
        while view:
            if self.ended or time.monotonic() > deadline:
                return False
            try:
                sent = self.sock.send(view[: 1 << 20])
            except (BlockingIOError, InterruptedError):
                _, writable, _ = select.select([], [self.sock], [], 0.05)
                self._pump(0)
                continue
            except OSError:
                self._close_seen("reset")
                return False
            view = view[sent:]
            self.last_sent = time.monotonic()
            if sent and len(self.pdus) < 64:
                self._pump(0)
        return True

    def drip(self, data: bytes, interval: float, deadline: float) -> bool:
        for position in range(len(data)):
            if not self.send(data[position : position + 1], deadline):
                return False
            stop = min(time.monotonic() + interval, deadline)
            while time.monotonic() < stop and not self.ended:
                self._pump(stop - time.monotonic())
            if self.ended or time.monotonic() >= deadline:
                return False
        return True

    def wait(self, deadline: float, after: int, until: Callable[[list[int]], bool]) -> None:
        """Read until the node closes, ``deadline`` passes, or ``until`` holds for the types of
        the PDUs received after the first ``after``."""
        while not self.closed and not self.garbled:
            kinds = [kind for _, kind, _ in self.pdus[after:]]
            if kinds and until(kinds):
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._pump(min(remaining, 0.2))

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def responses(bodies: Iterable[bytes]) -> tuple[list[int | None], bool]:
    """The Status (0000,0900) of each whole command set in P-DATA-TF bodies (None where one has
    none), its fragments gathered across PDVs and PDUs; and whether the bodies were well formed
    with no command left unfinished."""
    statuses: list[int | None] = []
    command = b""
    for body in bodies:
        offset = 0
        while offset < len(body):
            if offset + 6 > len(body):
                return statuses, False
            (length,) = struct.unpack_from(">I", body, offset)
            if length < 2 or offset + 4 + length > len(body):
                return statuses, False
            control = body[offset + 5]
            if control & 0x01:
                command += body[offset + 6 : offset + 4 + length]
                if control & 0x02:
                    statuses.append(_status(command))
                    command = b""
            offset += 4 + length
    return statuses, not command


def _status(command: bytes) -> int | None:
    position = 0
    while position + 8 <= len(command):
        group, element, length = struct.unpack_from("<HHI", command, position)
        if group == 0 and element == 0x0900 and length == 2:
            return int(struct.unpack_from("<H", command, position + 8)[0])
        position += 8 + length
    return None


def is_failure(status: int) -> bool:
    return status != SUCCESS and status != 0x0001 and status >> 12 != 0xB


def accepted_contexts(ac_body: bytes) -> dict[int, int]:
    """Presentation context id -> result (0 accepted) of an A-ASSOCIATE-AC body."""
    out = {}
    offset = 68
    while offset + 4 <= len(ac_body):
        kind = ac_body[offset]
        (length,) = struct.unpack_from(">H", ac_body, offset + 2)
        if kind == 0x21 and length >= 4:
            out[ac_body[offset + 4]] = ac_body[offset + 6]
        offset += 4 + length
    return out


def run_case(port: int, case: Case, timeouts: Timeouts) -> Outcome:
    """Play ``case`` against the node and judge what came back."""
    started = time.monotonic()
    try:
        wire = Wire(port, case.source)
    except OSError as exc:
        return Outcome(case, "connect-failed", detail=f"{type(exc).__name__}: {exc}")
    try:
        return _play(wire, case, timeouts, started)
    finally:
        wire.close()


def _play(wire: Wire, case: Case, timeouts: Timeouts, started: float) -> Outcome:
    request_deadline = wire.connected_at + timeouts.association_request + SLACK_SECONDS
    if case.associate:
        wire.send(standard_request(), request_deadline)
        wire.wait(request_deadline, 0, lambda kinds: True)
        kinds = [kind for _, kind, _ in wire.pdus]
        if kinds[:1] != [A_ASSOCIATE_AC]:
            detail = f"standard request answered {kinds} ({wire.closed or 'open'})"
            if kinds[:1] == [A_ASSOCIATE_RJ]:
                detail += f" rj={tuple(wire.pdus[0][2][1:4])}"
            return Outcome(
                case,
                "no-association",
                replies=kinds,
                seconds=time.monotonic() - started,
                detail=detail,
            )
        results = accepted_contexts(wire.pdus[0][2])
        if results.get(CTX_MR_EXPLICIT) != 0 or results.get(CTX_ECHO) != 0:
            return Outcome(
                case,
                "no-association",
                seconds=time.monotonic() - started,
                detail=f"standard contexts not accepted: {results}",
            )
    before = len(wire.pdus)
    timeout = timeouts.association_request if case.pre_association else timeouts.network
    # The node's clock for the PDU it waits for: from TCP connect before association, from the
    # start of its wait (its last PDU) after.
    reference = wire.connected_at if case.pre_association else wire.last_heard
    deadline = reference + timeout + SLACK_SECONDS
    for step in case.steps:
        if step.drip_interval:
            if not wire.drip(step.data, step.drip_interval, deadline):
                break
        elif not wire.send(step.data, deadline + 60):  # big sends may take a while
            break
        if wire.ended:
            break
    if not case.steps:
        wire.last_sent = reference
    # Reading: a terminal PDU ends the case, and so does an A-ASSOCIATE-AC to our request or
    # a P-DATA-TF (a response) after association. A slow or idle peer must be let go by the
    # deadline itself; after a big send the node's clock restarts with each PDU.
    latest = deadline
    if case.oracle != "closed-in-time":
        latest = max(deadline, wire.last_sent + timeout + SLACK_SECONDS)

    def done(kinds: list[int]) -> bool:
        if any(kind in TERMINAL_TYPES for kind in kinds):
            return True
        if case.oracle == "closed-in-time":
            return False
        if A_ASSOCIATE_AC in kinds:
            return True
        # a response: a whole command set (it may come in several PDVs or PDUs)
        statuses, _ = responses(body for _, kind, body in wire.pdus[before:] if kind == P_DATA_TF)
        return bool(statuses)

    wire.wait(latest, before, done)
    outcome = _judge(wire, case, timeout, reference, before)
    outcome.seconds = time.monotonic() - started
    _finish(wire, outcome)
    return outcome


def _judge(wire: Wire, case: Case, timeout: float, reference: float, before: int) -> Outcome:
    after = wire.pdus[before:]
    kinds = [kind for _, kind, _ in after]
    outcome = Outcome(case, "", replies=kinds)
    for _, kind, body in after:
        if kind == A_ASSOCIATE_AC and (len(body) < 68 or not body[1] & 1):
            outcome.verdict = "bad-reply"
            outcome.detail = f"A-ASSOCIATE-AC of {len(body)} bytes, version {body[:2].hex()}"
            _apply_oracle(outcome)
            return outcome
        if kind == A_ASSOCIATE_RJ:
            outcome.reject = tuple(body[1:4]) if len(body) == 4 else None  # type: ignore[assignment]
            if (
                len(body) != 4
                or (body[2], body[3]) not in LEGAL_REJECTIONS
                or body[1] not in (1, 2)
            ):
                outcome.verdict = "bad-reply"
                outcome.detail = f"A-ASSOCIATE-RJ {body.hex()}: not a PS3.8 9.3.4 rejection"
                _apply_oracle(outcome)
                return outcome
        elif kind == A_ABORT and (len(body) != 4 or (body[2], body[3]) not in LEGAL_ABORTS):
            if len(body) != 4 or body[2] != 0:  # a service-user's reason is not significant
                outcome.verdict = "bad-reply"
                outcome.detail = f"A-ABORT {body.hex()}: not a PS3.8 9.3.8 abort"
                _apply_oracle(outcome)
                return outcome
    statuses, whole = responses(body for _, kind, body in after if kind == P_DATA_TF)
    if P_DATA_TF in kinds and (not whole or not statuses or None in statuses):
        outcome.verdict = "bad-reply"
        outcome.detail = "P-DATA-TF without a whole command set with a Status"
        _apply_oracle(outcome)
        return outcome
    outcome.statuses = [status for status in statuses if status is not None]
    if wire.garbled:
        outcome.verdict = "bad-reply"
        outcome.detail = wire.garbled
    elif case.oracle == "closed-in-time":
        if wire.closed or any(k in TERMINAL_TYPES for k in kinds):
            outcome.verdict = "closed-in-time"
        else:
            outcome.verdict = "hang"
            outcome.detail = f"still open {time.monotonic() - reference:.1f}s after its start"
    elif kinds:
        outcome.verdict = "reply"
    elif wire.closed:
        assert wire.closed_at is not None
        # from the later of the node's wait starting and our last byte: a complete but bad
        # request closed on at once is a bare close however long it took to send
        waited = wire.closed_at - max(reference, wire.last_sent)
        if waited >= TIMEOUT_FLOOR * timeout:
            outcome.verdict = "timeout-close"
        elif sends_abort(b"".join(step.data for step in case.steps)):
            outcome.verdict = "closed-after-abort"  # PS3.8: an A-ABORT is not answered
        else:
            outcome.verdict = "bare-close"
            outcome.detail = f"{wire.closed} {waited:.2f}s after our last byte, no PDU"
    else:
        outcome.verdict = "hang"
        outcome.detail = f"no reply and still open {time.monotonic() - reference:.1f}s on"
    _apply_oracle(outcome)
    return outcome


def sends_abort(data: bytes) -> bool:
    """Whether the PDUs in ``data`` (walked by their lengths) include an A-ABORT."""
    offset = 0
    while offset + 6 <= len(data):
        kind, length = struct.unpack_from(">BxI", data, offset)
        if kind == A_ABORT:
            return True
        offset += 6 + length
    return False


def _apply_oracle(outcome: Outcome) -> None:
    case = outcome.case
    if outcome.verdict in ("bare-close", "hang", "bad-reply"):
        outcome.violations.append(outcome.verdict)
    if case.oracle == "reject":
        if outcome.reject is None:
            outcome.violations.append("no A-ASSOCIATE-RJ")
        elif case.reject and outcome.reject[1:] != case.reject:
            outcome.violations.append(
                f"A-ASSOCIATE-RJ source/reason {outcome.reject[1:]}, expected {case.reject}"
            )
    elif case.oracle == "not-success":
        if any(not is_failure(status) for status in outcome.statuses):
            outcome.violations.append("false success")
    elif case.oracle == "failure-status":
        allowed = case.statuses
        if not outcome.statuses:
            outcome.violations.append(f"no C-STORE status (expected {_hex(allowed)})")
        elif allowed and outcome.statuses[0] not in allowed:
            outcome.violations.append(
                f"status 0x{outcome.statuses[0]:04X}, expected {_hex(allowed)}"
            )
        elif not allowed and not is_failure(outcome.statuses[0]):
            outcome.violations.append("false success")


def _hex(statuses: Iterable[int]) -> str:
    return "/".join(f"0x{s:04X}" for s in statuses) or "a failure"


def _finish(wire: Wire, outcome: Outcome) -> None:
    """Leave politely where the association is still up (the release path is exercised too)."""
    if wire.closed or any(k in TERMINAL_TYPES for k in outcome.replies):
        return
    if A_ASSOCIATE_AC in [kind for _, kind, _ in wire.pdus]:
        before = len(wire.pdus)
        if wire.send(release_rq(), time.monotonic() + 2):
            wire.wait(time.monotonic() + 2, before, lambda kinds: A_RELEASE_RP in kinds)


# --- the node's processes ------------------------------------------------------------------------
def node_processes(pid: int) -> list[int]:
    """``pid`` and its descendants (receiver processes, workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo += children.get(current, [])
    return out


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (KiB) and Threads of a process; empty when it is gone."""
    values = {}
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                name, _, rest = line.partition(":")
                if name in ("VmRSS", "VmHWM", "Threads"):
                    values[name] = int(rest.split()[0])
    except OSError:
        return {}
    return values


def command_line(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\x00", b" ").decode(errors="replace")
    except OSError:
        return ""


class MemoryWatch:
    """Peak resident memory and thread count of the node's processes, sampled in a thread.

    The kernel's own peak (VmHWM) is reset at the start where /proc allows it
    (``clear_refs`` 5), so a short spike between two samples is not missed.
    """

    def __init__(self, root_pid: int, interval: float = 0.05):
        self.root_pid = root_pid
        self.interval = interval
        self.baseline: dict[int, int] = {}
        self.peak: dict[int, int] = {}
        self.threads: dict[int, int] = {}
        self.baseline_threads: dict[int, int] = {}
        self.hwm_reset: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="memory-watch")

    def start(self) -> MemoryWatch:
        for pid in node_processes(self.root_pid):
            status = proc_status(pid)
            if status:
                self.baseline[pid] = status["VmRSS"]
                self.baseline_threads[pid] = status.get("Threads", 0)
                try:
                    with open(f"/proc/{pid}/clear_refs", "w") as handle:
                        handle.write("5")
                    self.hwm_reset.add(pid)
                except OSError:
                    pass
        self._sample()
        self._thread.start()
        return self

    def _sample(self) -> None:
        for pid in node_processes(self.root_pid):
            status = proc_status(pid)
            if not status:
                continue
            self.baseline.setdefault(pid, status["VmRSS"])
            rss = status["VmRSS"]
            if pid in self.hwm_reset:
                rss = max(rss, status.get("VmHWM", 0))
            self.peak[pid] = max(self.peak.get(pid, 0), rss)
            self.threads[pid] = max(self.threads.get(pid, 0), status.get("Threads", 0))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def stop(self) -> MemoryWatch:
        self._stop.set()
        self._thread.join()
        self._sample()
        return self

    def thread_growth(self) -> dict[int, int]:
        return {
            pid: count - self.baseline_threads.get(pid, count)
            for pid, count in self.threads.items()
        }

    def growth_mib(self) -> dict[int, float]:
        return {
            pid: (self.peak[pid] - self.baseline.get(pid, self.peak[pid])) / 1024
            for pid in self.peak
        }

    def report(self) -> str:
        return "; ".join(
            f"pid {pid} ({command_line(pid).split(' -m ')[-1][:40] or 'gone'}): "
            f"{self.baseline.get(pid, 0) / 1024:.0f} -> peak {self.peak[pid] / 1024:.0f} MiB, "
            f"{self.threads.get(pid, 0)} threads"
            for pid in sorted(self.peak)
        )


# --- the node under test -------------------------------------------------------------------------
TIMEOUTS = Timeouts(association_request=2.0, network=2.5)
MAX_ASSOCIATIONS = 8
MAX_PENDING = 16
MAX_DATASET_MB = 8
NODE_EXTRA = f"""
network_timeout_seconds = {TIMEOUTS.network}
association_request_timeout_seconds = {TIMEOUTS.association_request}
max_associations = {MAX_ASSOCIATIONS}
max_pending_connections = {MAX_PENDING}
max_dataset_mb = {MAX_DATASET_MB}
receiver_processes = 2
"""
# 127.0.0.2 is refused (REFUSED_SOURCE); the good series and most cases come from 127.0.0.1.
ACCEPT = 'source_networks = ["127.0.0.1/32"]'
# One rule, for the good series only; the fuzz instances (no field strength) match none.
RULES = """
[[destinations]]
name = "pacs"
ae_title = "PACS"
host = "127.0.0.1"
port = 9

[[rules]]
name = "lowfield-t1"
match = { Modality = "MR", MagneticFieldStrength = "<1.0", SeriesDescription = "(?i)t1" }
action = "enhance"
destinations = ["pacs"]
"""


def start_fuzz_node(workdir: Path, port: int):  # type: ignore[no-untyped-def]
    """``dicomnode serve`` with short deadlines and small limits, so that slow cases end fast
    and a memory bound means something."""
    from tests.node.helpers import RunningNode

    return RunningNode(
        workdir, port, accept=ACCEPT, rules=RULES, node_extra=NODE_EXTRA, quiet_seconds=30
    ).start(timeout=60)


def receiver_pids(root_pid: int) -> list[int]:
    return [
        pid
        for pid in node_processes(root_pid)
        if "dicomnode.receive.receivers" in command_line(pid)
    ]


def stored_instances(data_dir: Path) -> set[str]:
    import sqlite3

    with sqlite3.connect(data_dir / "dicomnode.sqlite3") as conn:
        return {row[0] for row in conn.execute("select sop_instance_uid from instances")}


def echo(port: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["echoscu", "-v", "-aet", "WIREFUZZ", "-aec", "IQTNODE", "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def unexpected_errors(log_text: str) -> list[str]:
    """Log lines of errors the listener did not expect (its catch-all handlers)."""
    markers = (
        "association failed",
        "handler failed",
        "receiver process exited",
        "Traceback",
    )
    return [line for line in log_text.splitlines() if any(m in line for m in markers)]
