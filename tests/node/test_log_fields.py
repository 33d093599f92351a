"""The JSON formatter drops patient data by exact attribute, not every key containing "name".

Before, any field whose key contained "patient", "name" or "birth" was dropped, so the
"association accepted" line lost ``implementation_version_name`` (which says what software the
peer runs). Patient names must still never appear.
"""

from __future__ import annotations

import json
import logging
import subprocess
import time

import pytest

from dicomnode.logs import JsonFormatter, personal
from dicomnode.net.scp import ListenerSettings, StoreSCP
from tests.conftest import require_tool
from tests.node.test_net_listener import NODE, Recorder

NAME = "DOE^JANE"


def _format(**extra: object) -> dict[str, object]:
    record = logging.LogRecord("dicomnode.test", logging.INFO, __file__, 1, "event", None, None)
    for key, value in extra.items():
        setattr(record, key, value)
    text = JsonFormatter().format(record)
    return json.loads(text)


PERSONAL = {
    "PatientName": NAME,
    "patient_name": NAME,
    "patient-name": NAME,
    "PATIENTNAME": NAME,
    "OtherPatientNames": NAME,
    "PatientBirthName": NAME,
    "PatientMotherBirthName": NAME,
    "patient_id": "LF0001",
    "PatientID": "LF0001",
    "IssuerOfPatientID": "HOSPITAL",
    "PatientBirthDate": "19310101",
    "birth_date": "19310101",
    "PatientSex": "F",
    "PatientAge": "093Y",
    "ReferringPhysicianName": NAME,
    "referring_physician_name": NAME,
    "PerformingPhysicianName": NAME,
    "OperatorsName": NAME,
    "NameOfPhysiciansReadingStudy": NAME,
    "PersonName": NAME,
    "AccessionNumber": "A123",
}
KEPT = {
    "implementation_version_name": "OFFIS_DCMTK_367",
    "implementation_class_uid": "1.2.276.0.7230010.3.0.3.6.7",
    "rule_name": "lowfield-t1",
    "destination": "pacs",
    "calling_ae": "SCANNER",
    "series_uid": "1.2.3",
    "file_name": "x.dcm",
    "hostname": "node1",
}


def test_patient_attributes_are_dropped_and_other_names_kept():
    payload = _format(**PERSONAL, **KEPT)
    for key in PERSONAL:
        assert key not in payload, key
    for key, value in KEPT.items():
        assert payload[key] == value, key
    text = json.dumps(payload)
    assert NAME not in text and "LF0001" not in text and "19310101" not in text


@pytest.mark.parametrize("key", list(PERSONAL))
def test_personal_keys(key):
    assert personal(key)


@pytest.mark.parametrize("key", list(KEPT))
def test_keys_that_merely_contain_name_are_not_personal(key):
    assert not personal(key)


def test_the_association_accepted_line_names_the_peers_implementation(caplog):
    """dcmtk's echoscu against the listener: its implementation version name reaches the
    JSON line of the accepted association."""
    require_tool("echoscu")
    caplog.set_level(logging.INFO, logger="dicomnode.net.scp")
    scp = StoreSCP(
        ListenerSettings(NODE, bind_address="127.0.0.1", port=0, network_timeout_seconds=5.0),
        Recorder(),
    )
    scp.start()
    try:
        result = subprocess.run(
            ["echoscu", "-aet", "SCANNER", "-aec", NODE, "127.0.0.1", str(scp.port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            accepted = [r for r in caplog.records if r.getMessage() == "association accepted"]
            if accepted:
                break
            time.sleep(0.02)
    finally:
        scp.stop()
    payload = json.loads(JsonFormatter().format(accepted[0]))
    # dcmtk's (or, first on the PATH, pynetdicom's) echoscu names itself
    assert str(payload["implementation_version_name"]).startswith(("OFFIS_DCMTK", "PYNETDICOM"))
    assert payload["implementation_class_uid"]
    assert payload["calling_ae"] == "SCANNER"
