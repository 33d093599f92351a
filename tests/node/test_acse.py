"""The listener's association negotiation, checked against pynetdicom's PDU codec as an
independent reader and writer.

storescu and echoscu exercise the same code end to end in test_receive; here the corner cases:
rejected abstract and transfer syntaxes, the requestor's maximum PDU, malformed requests. The
requestor's side of the same codec is in test_net_codec.
"""

from __future__ import annotations

import pytest
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLSLossless,
    MRImageStorage,
)
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import PresentationContext

from dicomnode.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from dicomnode.net import acse
from dicomnode.net.scp import supported_contexts
from dicomnode.net.ul import ProtocolError

UNKNOWN_CLASS = "1.2.3.4.5.6.7"


def _request_body(contexts: list[tuple[int, str, list[str]]], maximum: int) -> bytes:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = acse.APPLICATION_CONTEXT_NAME
    primitive.calling_ae_title = "SCANNER"
    primitive.called_ae_title = "IQTNODE"
    proposed = []
    for context_id, abstract, transfers in contexts:
        context = PresentationContext()
        context.context_id = context_id
        context.abstract_syntax = abstract
        context.transfer_syntax = transfers
        proposed.append(context)
    primitive.presentation_context_definition_list = proposed
    length = MaximumLengthNotification()
    length.maximum_length_received = maximum
    primitive.user_information = [length]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return pdu.encode()[6:]


def test_negotiation_accepts_ours_and_names_each_rejection() -> None:
    body = _request_body(
        [
            (1, MRImageStorage, [JPEGLSLossless, ImplicitVRLittleEndian]),
            (3, MRImageStorage, [ExplicitVRBigEndian]),
            (5, UNKNOWN_CLASS, [ImplicitVRLittleEndian]),
        ],
        maximum=32768,
    )
    request = acse.read_request(body)
    assert (request.calling_ae, request.called_ae) == ("SCANNER", "IQTNODE")
    assert request.application_context == acse.APPLICATION_CONTEXT_NAME
    assert request.maximum_length == 32768
    results = acse.negotiate(request.contexts, supported_contexts())
    outcome = {r.context_id: (r.result, r.transfer_syntax) for r in results}
    # Our order of preference decides among the offered syntaxes, as pynetdicom's did.
    assert outcome[1] == (acse.RESULT_ACCEPTANCE, ImplicitVRLittleEndian)
    assert outcome[3][0] == acse.RESULT_TRANSFER_SYNTAXES_NOT_SUPPORTED
    assert outcome[5][0] == acse.RESULT_ABSTRACT_SYNTAX_NOT_SUPPORTED

    encoded = acse.acceptance(
        request, results, 0, IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
    )
    decoded = A_ASSOCIATE_AC()
    decoded.decode(encoded)
    primitive = decoded.to_primitive()
    contexts = {
        int(c.context_id): (int(c.result), str(c.transfer_syntax[0]))
        for c in primitive.presentation_context_definition_results_list
    }
    assert contexts[1] == (0, ImplicitVRLittleEndian)
    assert contexts[3][0] == 4 and contexts[5][0] == 3
    assert primitive.called_ae_title == "IQTNODE" and primitive.calling_ae_title == "SCANNER"
    (length,) = [u for u in primitive.user_information if isinstance(u, MaximumLengthNotification)]
    assert length.maximum_length_received == 0


def test_verification_context_is_accepted_for_echo() -> None:
    body = _request_body([(1, "1.2.840.10008.1.1", [ExplicitVRLittleEndian])], maximum=0)
    request = acse.read_request(body)
    (result,) = acse.negotiate(request.contexts, supported_contexts())
    assert (result.result, result.transfer_syntax) == (0, ExplicitVRLittleEndian)
    assert request.maximum_length == 0


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"\x00\x01" + b"\x00" * 20, "shorter than its fixed fields"),
        (b"\x00" * 68 + b"\x20\x00\x00\x10\x01\x00", "runs past the end"),
        (b"\x00" * 68 + b"\x20\x00\x00\x04\x01\x00\x00\x00", "lacks its syntaxes"),
        (b"\x00" * 68 + b"\x50\x00\x00\x06\x51\x00\x00\x02\x00\x00", "not 4 bytes long"),
    ],
)
def test_malformed_requests_are_protocol_errors(body: bytes, problem: str) -> None:
    with pytest.raises(ProtocolError, match=f"malformed A-ASSOCIATE-RQ: .*{problem}"):
        acse.read_request(body)


def test_the_request_keeps_its_protocol_version() -> None:
    """The listener rejects a version without bit 0 (test_net_listener); the decoder keeps it."""
    body = bytearray(_request_body([(1, MRImageStorage, [ImplicitVRLittleEndian])], maximum=0))
    body[0:2] = b"\x00\x02"
    request = acse.read_request(bytes(body))
    assert request.protocol_version == 2
