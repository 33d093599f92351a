"""The listener's association negotiation: A-ASSOCIATE-RQ read, A-ASSOCIATE-AC written.

pynetdicom's PDU classes decode a request through item objects and validated primitives, and
negotiate against every storage class again for each association: ~9 ms of CPU for the 128
presentation contexts storescu proposes, as much as receiving five instances. The encodings
are fixed by PS3.8 9.3.2-9.3.3, so the listener reads and writes them here, and chooses
transfer syntaxes as pynetdicom did (the first of ours that the requestor proposed).
Role selection items are read past and not answered, which leaves the default roles.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from dicomnode.net.ul import ProtocolError

APPLICATION_CONTEXT_NAME = "1.2.840.10008.3.1.1.1"
PROTOCOL_VERSION = 0x0001

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
RESULT_ABSTRACT_SYNTAX_NOT_SUPPORTED = 0x03
RESULT_TRANSFER_SYNTAXES_NOT_SUPPORTED = 0x04

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


@dataclass(frozen=True)
class ContextResult:
    context_id: int
    result: int
    transfer_syntax: str
    abstract_syntax: str


def read_request(body: bytes) -> AssociateRequest:
    """Decode the body of an A-ASSOCIATE-RQ PDU (after its 6-byte header)."""
    try:
        return _read_request(body)
    except ProtocolError as exc:
        raise ProtocolError(f"malformed A-ASSOCIATE-RQ: {exc}") from None


def _read_request(body: bytes) -> AssociateRequest:
    if len(body) < _FIXED_FIELDS:
        raise ProtocolError("shorter than its fixed fields")
    request = AssociateRequest(called_ae_field=body[4:20], calling_ae_field=body[20:36])
    request.called_ae = _ae_title(body[4:20])
    request.calling_ae = _ae_title(body[20:36])
    for kind, value in _items(body, _FIXED_FIELDS, len(body)):
        if kind == ITEM_APPLICATION_CONTEXT:
            request.application_context = _uid(value)
        elif kind == ITEM_PRESENTATION_CONTEXT_RQ:
            request.contexts.append(_proposed_context(value))
        elif kind == ITEM_USER_INFORMATION:
            for sub_kind, sub_value in _items(value, 0, len(value)):
                if sub_kind == ITEM_MAXIMUM_LENGTH:
                    if len(sub_value) != 4:
                        raise ProtocolError("maximum length item is not 4 bytes long")
                    (request.maximum_length,) = struct.unpack(">I", sub_value)
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
    """The whole A-ASSOCIATE-AC PDU; the AE title fields echo the request's (PS3.8 9.3.3)."""
    items = [_item(ITEM_APPLICATION_CONTEXT, APPLICATION_CONTEXT_NAME.encode("ascii"))]
    for result in results:
        syntax = _item(ITEM_TRANSFER_SYNTAX, result.transfer_syntax.encode("ascii"))
        items.append(
            _item(
                ITEM_PRESENTATION_CONTEXT_AC,
                bytes((result.context_id, 0, result.result, 0)) + syntax,
            )
        )
    user = b"".join(
        (
            _item(ITEM_MAXIMUM_LENGTH, struct.pack(">I", maximum_length)),
            _item(ITEM_IMPLEMENTATION_CLASS_UID, implementation_uid.encode("ascii")),
            _item(ITEM_IMPLEMENTATION_VERSION_NAME, implementation_version.encode("ascii")),
        )
    )
    items.append(_item(ITEM_USER_INFORMATION, user))
    body = (
        struct.pack(">HH", PROTOCOL_VERSION, 0)
        + request.called_ae_field
        + request.calling_ae_field
        + bytes(32)
        + b"".join(items)
    )
    return struct.pack(">BBI", 0x02, 0, len(body)) + body


def _items(data: bytes, start: int, end: int) -> Iterator[tuple[int, bytes]]:
    """(item type, item value) of each item between ``start`` and ``end``."""
    offset = start
    while offset < end:
        if offset + 4 > end:
            raise ProtocolError("truncated item")
        kind = data[offset]
        (length,) = struct.unpack_from(">H", data, offset + 2)
        if offset + 4 + length > end:
            raise ProtocolError(f"item 0x{kind:02X} runs past the end of its PDU")
        yield kind, data[offset + 4 : offset + 4 + length]
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


def _item(kind: int, value: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(value)) + value


def _uid(value: bytes) -> str:
    return value.decode("ascii", errors="replace").rstrip("\x00 ")


def _ae_title(value: bytes) -> str:
    return value.decode("ascii", errors="replace").strip()
