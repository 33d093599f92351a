"""The network package's own identity and codec, the requestor's bounded reads, and the slot
table shared by receiver processes.

Real peers where a real peer matters: dcmtk's echoscu reads our A-ASSOCIATE-AC, dcmtk's
storescp reads our A-ASSOCIATE-RQ; pynetdicom's PDU classes decode what our one codec writes in
both directions.
"""

from __future__ import annotations

import io
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
)

from dicomnode.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from dicomnode.net import acse, ul
from dicomnode.net.limits import ASSOCIATIONS, PENDING, Slots
from dicomnode.net.scp import ListenerSettings, StoreSCP, part10_header
from dicomnode.net.scu import AssociationError, DatasetSource, StoreAssociation
from tests.conftest import free_port, require_tool
from tests.node.test_net_listener import NODE, Recorder

MR = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
ROOT = Path(__file__).resolve().parents[2]


# --- identity -----------------------------------------------------------------------------------
def test_our_identity_is_a_valid_uid_and_version_name():
    assert re.fullmatch(r"2\.25\.[1-9]\d*", IMPLEMENTATION_CLASS_UID)
    assert len(IMPLEMENTATION_CLASS_UID) <= 64
    assert IMPLEMENTATION_VERSION_NAME.startswith("DICOMNODE_")
    assert 1 <= len(IMPLEMENTATION_VERSION_NAME) <= 16 and IMPLEMENTATION_VERSION_NAME.isascii()


def test_echoscu_sees_our_identity_in_the_acceptance():
    require_tool("echoscu")
    scp = StoreSCP(ListenerSettings(NODE, "127.0.0.1", 0), Recorder())
    scp.start()
    try:
        result = subprocess.run(
            ["echoscu", "-d", "-aec", NODE, "127.0.0.1", str(scp.port)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        scp.stop()
    assert result.returncode == 0, result.stderr
    log = result.stdout + result.stderr
    assert f"Their Implementation Class UID:    {IMPLEMENTATION_CLASS_UID}" in log
    assert f"Their Implementation Version Name: {IMPLEMENTATION_VERSION_NAME}" in log
    assert "PYNETDICOM" not in log


def test_storescp_sees_our_identity_in_the_request(tmp_path):
    require_tool("storescp")
    port = free_port()
    process = subprocess.Popen(
        ["storescp", "-d", "-aet", "PACS", "-od", str(tmp_path), str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        association = None
        deadline = time.monotonic() + 10
        while association is None:
            try:
                association = StoreAssociation.open(
                    "127.0.0.1",
                    port,
                    "IQTNODE",
                    "PACS",
                    [acse.ProposedContext(1, MR, (EXPLICIT,))],
                    connect_timeout=5,
                    dimse_timeout=5,
                )
            except AssociationError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert association.accepted == {1: (MR, EXPLICIT)}
        association.release()
    finally:
        process.terminate()
        log, _ = process.communicate(timeout=10)
    assert f"Their Implementation Class UID:    {IMPLEMENTATION_CLASS_UID}" in log
    assert f"Their Implementation Version Name: {IMPLEMENTATION_VERSION_NAME}" in log


def test_spooled_file_meta_names_us():
    header = part10_header(MR, "1.2.3.4", IMPLICIT, "SCANNER")
    meta = pydicom.dcmread(io.BytesIO(header + b"\x08\x00\x18\x00\x00\x00\x00\x00"), force=True)
    assert meta.file_meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert meta.file_meta.ImplementationVersionName == IMPLEMENTATION_VERSION_NAME
    assert meta.file_meta.SourceApplicationEntityTitle == "SCANNER"


def test_no_private_pynetdicom_module_and_no_pynetdicom_pdus_in_net():
    for path in (ROOT / "dicomnode" / "net").glob("*.py"):
        text = path.read_text()
        assert "pynetdicom._" not in text, path
        assert "pynetdicom.pdu" not in text, path  # one codec: ours, both ways
        assert "PYNETDICOM_IMPLEMENTATION" not in text, path


# --- one codec, both directions -----------------------------------------------------------------
def test_our_request_decodes_the_same_with_our_codec_and_pynetdicoms():
    contexts = [
        acse.ProposedContext(1, MR, (EXPLICIT, IMPLICIT)),
        acse.ProposedContext(3, "1.2.840.10008.1.1", (IMPLICIT,)),
    ]
    pdu = acse.association_request("IQTNODE", "PACS", contexts, 65536, "2.25.1", "DICOMNODE_X")
    ours = acse.read_request(pdu[6:])
    assert (ours.calling_ae, ours.called_ae, ours.maximum_length) == ("IQTNODE", "PACS", 65536)
    assert ours.contexts == contexts
    assert (ours.implementation_class_uid, ours.implementation_version_name) == (
        "2.25.1",
        "DICOMNODE_X",
    )
    theirs = A_ASSOCIATE_RQ()
    theirs.decode(pdu)
    primitive = theirs.to_primitive()
    assert primitive.calling_ae_title == "IQTNODE" and primitive.called_ae_title == "PACS"
    assert [
        (c.context_id, str(c.abstract_syntax), [str(s) for s in c.transfer_syntax])
        for c in primitive.presentation_context_definition_list
    ] == [(1, MR, [EXPLICIT, IMPLICIT]), (3, "1.2.840.10008.1.1", [IMPLICIT])]
    user = {type(item): item for item in primitive.user_information}
    assert user[MaximumLengthNotification].maximum_length_received == 65536
    assert user[ImplementationClassUIDNotification].implementation_class_uid == "2.25.1"
    assert user[ImplementationVersionNameNotification].implementation_version_name == "DICOMNODE_X"
    assert theirs.encode() == pdu  # byte for byte what pynetdicom would write


def test_our_acceptance_decodes_the_same_with_our_codec_and_pynetdicoms():
    request = acse.read_request(
        acse.association_request(
            "SCANNER",
            "IQTNODE",
            [
                acse.ProposedContext(1, MR, (EXPLICIT,)),
                acse.ProposedContext(3, "1.2.3", (IMPLICIT,)),
            ],
            0,
            "1.2.3.4",
            "X",
        )[6:]
    )
    results = acse.negotiate(request.contexts, {MR: [EXPLICIT]})
    pdu = acse.acceptance(request, results, 32768, IMPLEMENTATION_CLASS_UID, "DICOMNODE_T")
    ours = acse.read_acceptance(pdu[6:])
    assert [(r.context_id, r.result, r.transfer_syntax) for r in ours.results] == [
        (1, 0, EXPLICIT),
        (3, 3, IMPLICIT),
    ]
    assert (ours.calling_ae, ours.called_ae, ours.maximum_length) == ("SCANNER", "IQTNODE", 32768)
    assert ours.implementation_class_uid == IMPLEMENTATION_CLASS_UID
    theirs = A_ASSOCIATE_AC()
    theirs.decode(pdu)
    primitive = theirs.to_primitive()
    assert [
        (c.context_id, c.result) for c in primitive.presentation_context_definition_results_list
    ] == [(1, 0), (3, 3)]
    assert theirs.encode() == pdu


def test_a_request_we_cannot_encode_is_a_value_error():
    with pytest.raises(ValueError):
        acse.association_request("SCANNÉR", "PACS", [], 0, "2.25.1", "X")
    with pytest.raises(ValueError):
        acse.association_request(
            "A", "B", [acse.ProposedContext(1, "1.2.é", (EXPLICIT,))], 0, "2.25.1", "X"
        )


# --- the requestor reads with a cap -------------------------------------------------------------
def _fake_pacs(answer_store: bytes) -> tuple[int, threading.Thread, list[bytes]]:
    """A one-shot peer: accepts the association, answers the first C-STORE with
    ``answer_store``, records what it received after that."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    received: list[bytes] = []

    def run() -> None:
        conn, _ = server.accept()
        server.close()
        with conn:
            reader = ul.PDUReader(conn)
            reader.begin(10)
            _, body = reader.pdu(1 << 20)
            request = acse.read_request(body)
            results = acse.negotiate(request.contexts, {MR: [EXPLICIT]})
            conn.sendall(acse.acceptance(request, results, 16384, "1.2.3", "FAKE"))
            reader.begin(10)
            kind, length = reader.header()
            reader.skip(length)  # the C-STORE command, one PDU
            reader.begin(10)
            kind, length = reader.header()
            reader.skip(length)  # the dataset, one PDU
            conn.sendall(answer_store)
            conn.settimeout(5)
            try:
                while data := conn.recv(65536):
                    received.append(data)
            except OSError:
                pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return port, thread, received


def test_a_response_pdu_longer_than_we_accept_is_refused_unread():
    """Before, the sender read whatever length a response PDU claimed (here 2 GiB)."""
    port, thread, received = _fake_pacs(bytes((ul.PDU_DATA, 0)) + (2**31).to_bytes(4, "big"))
    association = StoreAssociation.open(
        "127.0.0.1",
        port,
        "IQTNODE",
        "PACS",
        [acse.ProposedContext(1, MR, (EXPLICIT,))],
        connect_timeout=5,
        dimse_timeout=5,
    )
    started = time.monotonic()
    with pytest.raises(AssociationError, match="exceeds the 65536 bytes accepted"):
        association.store(1, MR, "1.2.3.4", 1, DatasetSource(data=b"\x08\x00\x18\x00"))
    assert time.monotonic() - started < 2
    thread.join(10)
    assert b"".join(received)[:1] == bytes((ul.PDU_ABORT,))  # and the peer was told


# --- node-wide slots ----------------------------------------------------------------------------
def test_slots_are_counted_across_processes_and_cleared_for_a_dead_one():
    slots = Slots.create(2, max_pending=3, max_associations=2, index=0)
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from dicomnode.net.limits import Slots, ASSOCIATIONS;"
            f"s = Slots({slots.fd}, 2, 1, 3, 2); assert s.take(ASSOCIATIONS);"
            "print('taken', flush=True); time.sleep(60)",
        ],
        pass_fds=(slots.fd,),
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "taken"
        assert slots.take(ASSOCIATIONS)  # one in each process: 2 of 2
        assert not slots.take(ASSOCIATIONS)  # the node is full, whichever process asks
        assert slots.take(PENDING)  # the other kind is counted apart
        child.kill()
        child.wait()
        slots.clear(1)  # what the receiver pool does before it replaces a dead receiver
        assert slots.take(ASSOCIATIONS)
        slots.give_back(ASSOCIATIONS)
        slots.give_back(ASSOCIATIONS)
        assert slots.total(ASSOCIATIONS) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        slots.close()
