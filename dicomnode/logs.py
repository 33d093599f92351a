"""Structured logging: one JSON object per line, carrying UIDs and job ids as fields.

Patient names and IDs never reach a log: the node only ever passes UIDs, AE titles, job ids and
statuses as ``extra`` fields, and the formatter drops any field that names patient or other
personal data, in case a future caller slips: a key is compared in lower case without
underscores or other separators (``PatientName``, ``patient_name`` and ``patient-name`` are one
key), and is dropped when it contains ``patient`` or ``birth`` or is one of the person
attributes of ``PERSONAL_KEYS`` (physicians, operators, other persons' names, addresses,
telephone numbers, accession number). Nothing else is dropped: a key that merely contains
"name" (``implementation_version_name``, ``rule_name``) is kept.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import warnings

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()) | {"message"}
# Any key containing these (after normalising) is personal: PatientName, PatientID,
# IssuerOfPatientID, OtherPatientIDs, PatientBirthDate, PatientMotherBirthName, birth_date, ...
_PERSONAL_WORDS = ("patient", "birth")
# PS3.6 keywords of the other attributes that identify or describe a person, normalised
PERSONAL_KEYS = frozenset(
    {
        "referringphysicianname",
        "referringphysicianaddress",
        "referringphysiciantelephonenumbers",
        "performingphysicianname",
        "nameofphysiciansreadingstudy",
        "physiciansofrecord",
        "requestingphysician",
        "scheduledperformingphysicianname",
        "consultingphysicianname",
        "operatorsname",
        "personname",
        "personaddress",
        "persontelephonenumbers",
        "responsibleperson",
        "accessionnumber",
        "medicalrecordlocator",
        "ethnicgroup",
        "occupation",
        "militaryrank",
        "countryofresidence",
        "regionofresidence",
    }
)
_SEPARATORS = re.compile(r"[^a-z0-9]")


def personal(key: str) -> bool:
    """Whether a log field named ``key`` would carry patient or other personal data."""
    normal = _SEPARATORS.sub("", key.lower())
    return normal in PERSONAL_KEYS or any(word in normal for word in _PERSONAL_WORDS)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key in _STANDARD or key.startswith("_"):
                continue
            if personal(key):
                continue
            payload[key] = value
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def configure(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # pynetdicom logs dataset summaries (which may include patient data) at DEBUG/INFO.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    quiet_value_warnings()


def quiet_value_warnings() -> None:
    """Keep the values quoted by pydicom's and highdicom's validation out of the log.

    pydicom reports an invalid value ("Invalid value for VR DA: '31.12.1931'") both to its
    logger and as a Python warning, which the default handler prints to stderr, the journal;
    highdicom quotes a patient name it finds odd. A birth date or a name is patient data, so
    these reports are dropped; ``pipeline.derive`` reports invalid patient and study attributes
    itself, by keyword only.
    """
    for name in ("pydicom", "highdicom"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")
