"""Association control: the A-ASSOCIATE-RQ and -AC PDUs, both ways, and the negotiation.

One codec for both directions: the listener (``scp``) decodes requests and encodes
acceptances, the requestor (``scu``) encodes requests and decodes acceptances, with the same
item reader and writer. The encodings are fixed by PS3.8 9.3.2-9.3.3 and PS3.7 D.3.3.

Negotiation, on the listener's side: each proposed context whose abstract syntax we serve is
accepted in the first of our transfer syntaxes that the requestor offered; the others are
rejected with the reason. Role selection and extended negotiation items are read past and not
answered, which leaves the default roles and no extended negotiation (PS3.7 D.3.3.4-5).

Decoding is lenient and encoding strict: a UID that is not ASCII decodes with U+FFFD in it,
matches nothing of ours, and so is rejected with a reason (a context) or makes the listener
reject the association (the application context); nothing the peer sent is echoed unless it
encodes, so an answer always goes out.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from dicomnode.net.ul import PDU_ASSOCIATE_AC, PDU_ASSOCIATE_RQ, ProtocolError

APPLICATION_CONTEXT_NAME = "1.2.840.10008.3.1.1.1"
PROTOCOL_VERSION = 0x0001  # bit 0: version 1, the only one there is (PS3.8 9.3.2)
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"

ITEM_APPLICATION_CONTEXT = 0x10
ITEM_PRESENTATION_CONTEXT_RQ = 0x20
ITEM_PRESENTATION_CONTEXT_AC = 0x21
ITEM_ABSTRACT_SYNTAX = 0x30
ITEM_TRANSFER_SYNTAX = 0x40
ITEM_USER_INFORMATION = 0x50
ITEM_MAXIMUM_LENGTH = 0x51
ITEM_IMPLEMENTATION_CLASS_UID = 0x52
ITEM_IMPLEMENTATION_VERSION_NAME = 0x55

RESULT_ACCEPTANCE = 0x00
RESULT_USER_REJECTION = 0x01
RESULT_NO_REASON = 0x02
RESULT_ABSTRACT_SYNTAX_NOT_SUPPORTED = 0x03
RESULT_TRANSFER_SYNTAXES_NOT_SUPPORTED = 0x04

# A-ASSOCIATE-RJ fields (PS3.8 9.3.4)
REJECT_PERMANENT = 0x01
REJECT_TRANSIENT = 0x02
SOURCE_SERVICE_USER = 0x01
SOURCE_PROVIDER_ACSE = 0x02
SOURCE_PROVIDER_PRESENTATION = 0x03
# reasons when the source is the service user
USER_NO_REASON = 0x01
USER_CONTEXT_NAME_NOT_SUPPORTED = 0x02
USER_CALLING_AE_NOT_RECOGNISED = 0x03
USER_CALLED_AE_NOT_RECOGNISED = 0x07
# reasons when the source is the service provider, ACSE related
ACSE_NO_REASON = 0x01
ACSE_PROTOCOL_VERSION_NOT_SUPPORTED = 0x02
# reasons when the source is the service provider, presentation related
PRESENTATION_TEMPORARY_CONGESTION = 0x01
PRESENTATION_LOCAL_LIMIT_EXCEEDED = 0x02

# in the words pynetdicom used, which operators' notes and our tests already quote
_RESULTS = {REJECT_PERMANENT: "Rejected (Permanent)", REJECT_TRANSIENT: "Rejected (Transient)"}
_SOURCES = {
    SOURCE_SERVICE_USER: "Service User",
    SOURCE_PROVIDER_ACSE: "Service Provider (ACSE)",
    SOURCE_PROVIDER_PRESENTATION: "Service Provider (Presentation)",
}
_REASONS = {
    (SOURCE_SERVICE_USER, USER_NO_REASON): "No reason given",
    (
        SOURCE_SERVICE_USER,
        USER_CONTEXT_NAME_NOT_SUPPORTED,
    ): "Application context name not supported",
    (SOURCE_SERVICE_USER, USER_CALLING_AE_NOT_RECOGNISED): "Calling AE title not recognised",
    (SOURCE_SERVICE_USER, USER_CALLED_AE_NOT_RECOGNISED): "Called AE title not recognised",
    (SOURCE_PROVIDER_ACSE, ACSE_NO_REASON): "No reason given",
    (SOURCE_PROVIDER_ACSE, ACSE_PROTOCOL_VERSION_NOT_SUPPORTED): "Protocol version not supported",
    (SOURCE_PROVIDER_PRESENTATION, PRESENTATION_TEMPORARY_CONGESTION): "Temporary congestion",
    (SOURCE_PROVIDER_PRESENTATION, PRESENTATION_LOCAL_LIMIT_EXCEEDED): "Local limit exceeded",
}

_FIXED_FIELDS = 68  # protocol version, reserved, called AE, calling AE, reserved (PS3.8 9.3.2)


@dataclass(frozen=True)
class ProposedContext:
    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass
class AssociateRequest:
    called_ae: str = ""
    calling_ae: str = ""
    application_context: str = ""
    contexts: list[ProposedContext] = field(default_factory=list)
    maximum_length: int = 0  # 0: the requestor set no limit
    called_ae_field: bytes = b" " * 16
    calling_ae_field: bytes = b" " * 16
    protocol_version: int = PROTOCOL_VERSION
    implementation_class_uid: str = ""
    implementation_version_name: str = ""


@dataclass(frozen=True)
class ContextResult:
    context_id: int
    result: int
    transfer_syntax: str
    abstract_syntax: str = ""


@dataclass
class AssociateAccept:
    called_ae: str = ""
    calling_ae: str = ""
    application_context: str = ""
    results: list[ContextResult] = field(default_factory=list)
    maximum_length: int = 0
    protocol_version: int = PROTOCOL_VERSION
    implementation_class_uid: str = ""
    implementation_version_name: str = ""


def rejection_text(result: int, source: int, reason: int) -> str:
    """An A-ASSOCIATE-RJ's three fields in words."""
    return ", ".join(
        (
            _RESULTS.get(result, f"result {result}"),
            _SOURCES.get(source, f"source {source}"),
            _REASONS.get((source, reason), f"reason {reason}"),
        )
    )


# --- the listener's side -----------------------------------------------------------------------
def read_request(body: bytes | bytearray) -> AssociateRequest:
    """Decode the body of an A-ASSOCIATE-RQ PDU (after its 6-byte header)."""
    try:
        return _read_request(body)
    except ProtocolError as exc:
        raise ProtocolError(f"malformed A-ASSOCIATE-RQ: {exc}", exc.reason) from None


def _read_request(body: bytes | bytearray) -> AssociateRequest:
    if len(body) < _FIXED_FIELDS:
        raise ProtocolError("shorter than its fixed fields")
    request = AssociateRequest(
        called_ae_field=bytes(body[4:20]), calling_ae_field=bytes(body[20:36])
    )
    (request.protocol_version,) = struct.unpack_from(">H", body, 0)
    request.called_ae = _ae_title(body[4:20])
    request.calling_ae = _ae_title(body[20:36])
    for kind, value in _items(body, _FIXED_FIELDS, len(body)):
        if kind == ITEM_APPLICATION_CONTEXT:
            request.application_context = _uid(value)
        elif kind == ITEM_PRESENTATION_CONTEXT_RQ:
            request.contexts.append(_proposed_context(value))
        elif kind == ITEM_USER_INFORMATION:
            (
                request.maximum_length,
                request.implementation_class_uid,
                request.implementation_version_name,
            ) = _user_information(value)
    return request


def negotiate(
    proposed: Sequence[ProposedContext], supported: Mapping[str, Sequence[str]]
) -> list[ContextResult]:
    """Accept each context whose abstract syntax we serve, in the first of our transfer
    syntaxes the requestor offers; reject the others with the reason."""
    results = []
    for context in proposed:
        ours = supported.get(context.abstract_syntax)
        first_offered = context.transfer_syntaxes[0] if context.transfer_syntaxes else ""
        if ours is None:
            result, syntax = RESULT_ABSTRACT_SYNTAX_NOT_SUPPORTED, first_offered
        else:
            chosen = next((s for s in ours if s in context.transfer_syntaxes), None)
            if chosen is None:
                result, syntax = RESULT_TRANSFER_SYNTAXES_NOT_SUPPORTED, first_offered
            else:
                result, syntax = RESULT_ACCEPTANCE, chosen
        results.append(ContextResult(context.context_id, result, syntax, context.abstract_syntax))
    return results


def acceptance(
    request: AssociateRequest,
    results: Sequence[ContextResult],
    maximum_length: int,
    implementation_uid: str,
    implementation_version: str,
) -> bytes:
    """The whole A-ASSOCIATE-AC PDU; the AE title fields echo the request's (PS3.8 9.3.3).

    The transfer syntax of a rejected context is not significant (9.3.3.2): the proposed one
    is echoed when it is a plain UID, implicit VR little endian otherwise.
    """
    items = [_item(ITEM_APPLICATION_CONTEXT, APPLICATION_CONTEXT_NAME.encode("ascii"))]
    for result in results:
        syntax = result.transfer_syntax
        if result.result != RESULT_ACCEPTANCE and not _plain_uid(syntax):
            syntax = IMPLICIT_VR_LITTLE_ENDIAN
        items.append(
            _item(
                ITEM_PRESENTATION_CONTEXT_AC,
                bytes((result.context_id, 0, result.result, 0))
                + _item(ITEM_TRANSFER_SYNTAX, syntax.encode("ascii")),
            )
        )
    items.append(_user_items(maximum_length, implementation_uid, implementation_version))
    return _pdu(PDU_ASSOCIATE_AC, request.called_ae_field, request.calling_ae_field, items)


# --- the requestor's side ----------------------------------------------------------------------
def association_request(
    calling_ae: str,
    called_ae: str,
    contexts: Sequence[ProposedContext],
    maximum_length: int,
    implementation_uid: str,
    implementation_version: str,
) -> bytes:
    """The whole A-ASSOCIATE-RQ PDU; ValueError for an AE title or UID that cannot be sent."""
    items = [_item(ITEM_APPLICATION_CONTEXT, APPLICATION_CONTEXT_NAME.encode("ascii"))]
    for context in contexts:
        if not 1 <= context.context_id <= 255 or not context.context_id % 2:
            raise ValueError(f"presentation context ID {context.context_id} is not odd 1-255")
        sub_items = [_item(ITEM_ABSTRACT_SYNTAX, _uid_bytes(context.abstract_syntax))]
        sub_items += [_item(ITEM_TRANSFER_SYNTAX, _uid_bytes(s)) for s in context.transfer_syntaxes]
        items.append(
            _item(
                ITEM_PRESENTATION_CONTEXT_RQ,
                bytes((context.context_id, 0, 0, 0)) + b"".join(sub_items),
            )
        )
    items.append(_user_items(maximum_length, implementation_uid, implementation_version))
    return _pdu(PDU_ASSOCIATE_RQ, _ae_field(called_ae), _ae_field(calling_ae), items)


def read_acceptance(body: bytes | bytearray) -> AssociateAccept:
    """Decode the body of an A-ASSOCIATE-AC PDU (after its 6-byte header)."""
    try:
        return _read_acceptance(body)
    except ProtocolError as exc:
        raise ProtocolError(f"malformed A-ASSOCIATE-AC: {exc}", exc.reason) from None


def _read_acceptance(body: bytes | bytearray) -> AssociateAccept:
    if len(body) < _FIXED_FIELDS:
        raise ProtocolError("shorter than its fixed fields")
    accept = AssociateAccept(called_ae=_ae_title(body[4:20]), calling_ae=_ae_title(body[20:36]))
    (accept.protocol_version,) = struct.unpack_from(">H", body, 0)
    for kind, value in _items(body, _FIXED_FIELDS, len(body)):
        if kind == ITEM_APPLICATION_CONTEXT:
            accept.application_context = _uid(value)
        elif kind == ITEM_PRESENTATION_CONTEXT_AC:
            if len(value) < 4:
                raise ProtocolError("presentation context item shorter than its fixed fields")
            syntax = ""
            for sub_kind, sub_value in _items(value, 4, len(value)):
                if sub_kind == ITEM_TRANSFER_SYNTAX:
                    syntax = _uid(sub_value)
            accept.results.append(ContextResult(value[0], value[2], syntax))
        elif kind == ITEM_USER_INFORMATION:
            (
                accept.maximum_length,
                accept.implementation_class_uid,
                accept.implementation_version_name,
            ) = _user_information(value)
    return accept


# --- items -------------------------------------------------------------------------------------
def _items(data: bytes | bytearray, start: int, end: int) -> Iterator[tuple[int, bytes]]:
    """(item type, item value) of each item between ``start`` and ``end``."""
    offset = start
    while offset < end:
        if offset + 4 > end:
            raise ProtocolError("truncated item")
        kind = data[offset]
        (length,) = struct.unpack_from(">H", data, offset + 2)
        if offset + 4 + length > end:
            raise ProtocolError(f"item 0x{kind:02X} runs past the end of its PDU")
        yield kind, bytes(data[offset + 4 : offset + 4 + length])
        offset += 4 + length


def _proposed_context(value: bytes) -> ProposedContext:
    if len(value) < 4:
        raise ProtocolError("presentation context item shorter than its fixed fields")
    abstract = ""
    transfers = []
    for kind, sub_value in _items(value, 4, len(value)):
        if kind == ITEM_ABSTRACT_SYNTAX:
            abstract = _uid(sub_value)
        elif kind == ITEM_TRANSFER_SYNTAX:
            transfers.append(_uid(sub_value))
    if not abstract or not transfers:
        raise ProtocolError(f"presentation context {value[0]} lacks its syntaxes")
    return ProposedContext(value[0], abstract, tuple(transfers))


def _user_information(value: bytes) -> tuple[int, str, str]:
    """(maximum length, implementation class UID, implementation version name)."""
    maximum, uid, version = 0, "", ""
    for kind, sub_value in _items(value, 0, len(value)):
        if kind == ITEM_MAXIMUM_LENGTH:
            if len(sub_value) != 4:
                raise ProtocolError("maximum length item is not 4 bytes long")
            (maximum,) = struct.unpack(">I", sub_value)
        elif kind == ITEM_IMPLEMENTATION_CLASS_UID:
            uid = _uid(sub_value)
        elif kind == ITEM_IMPLEMENTATION_VERSION_NAME:
            version = _ae_title(sub_value)
    return maximum, uid, version


def _user_items(maximum_length: int, implementation_uid: str, version: str) -> bytes:
    return _item(
        ITEM_USER_INFORMATION,
        b"".join(
            (
                _item(ITEM_MAXIMUM_LENGTH, struct.pack(">I", maximum_length)),
                _item(ITEM_IMPLEMENTATION_CLASS_UID, _uid_bytes(implementation_uid)),
                _item(ITEM_IMPLEMENTATION_VERSION_NAME, version.encode("ascii")),
            )
        ),
    )


def _pdu(kind: int, called: bytes, calling: bytes, items: list[bytes]) -> bytes:
    body = struct.pack(">HH", PROTOCOL_VERSION, 0) + called + calling + bytes(32) + b"".join(items)
    return struct.pack(">BBI", kind, 0, len(body)) + body


def _item(kind: int, value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise ValueError(f"item 0x{kind:02X} of {len(value)} bytes does not fit its length field")
    return struct.pack(">BBH", kind, 0, len(value)) + value


def _ae_field(title: str) -> bytes:
    encoded = title.encode("ascii")
    if not 1 <= len(encoded) <= 16:
        raise ValueError(f"AE title {title!r} is not 1 to 16 characters")
    return encoded.ljust(16, b" ")


def _uid_bytes(uid: str) -> bytes:
    if not _plain_uid(uid):
        raise ValueError(f"{uid!r} is not a UID")
    return uid.encode("ascii")


def _plain_uid(uid: str) -> bool:
    return 0 < len(uid) <= 64 and uid.isascii() and all(c.isdigit() or c == "." for c in uid)


def _uid(value: bytes) -> str:
    return value.decode("ascii", errors="replace").rstrip("\x00 ")


def _ae_title(value: bytes | bytearray) -> str:
    return bytes(value).decode("ascii", errors="replace").strip()
