"""Intake of one received instance: validate, store durably, record, and answer with a status.

Kept free of pynetdicom so that the order that guarantees durability (validate, fsync, rename,
commit, only then Success) is visible in one place and testable without a network.
"""

from __future__ import annotations

import io
import logging
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from sqlalchemy import Connection, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.models import Instance, QuarantinedObject, Series, SeriesState, utcnow
from db.session import Database
from dicomnode.assembly import ENHANCED_MULTIFRAME_CLASSES, reopen
from dicomnode.spool import (
    OutOfSpace,
    SpoolLayout,
    check_floor,
    store_new,
    write_durably,
)

log = logging.getLogger("dicomnode.intake")

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110

_UID = re.compile(r"^(0|[1-9]\d*)(\.(0|[1-9]\d*))*$")
_NATIVE_SYNTAXES = {
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.2",
}


@dataclass(frozen=True)
class Received:
    """One C-STORE request as it came off the wire."""

    data: bytes  # Part 10 encoding: preamble, file meta, dataset as sent
    sop_class_uid: str
    sop_instance_uid: str
    calling_ae: str
    peer: str
    association_id: str


@dataclass(frozen=True)
class Outcome:
    status: int
    series_id: int | None = None
    duplicate: bool = False
    reason: str | None = None
    count_reached: bool = False  # the series holds its expected number of instances


class Rejected(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Intake:
    def __init__(self, database: Database, layout: SpoolLayout, min_free_bytes: int):
        self.database = database
        self.layout = layout
        self.min_free_bytes = min_free_bytes

    def receive(self, item: Received) -> Outcome:
        try:
            dataset = _parse(item)
            _check_consistency(item, dataset)
        except Rejected as exc:
            self._quarantine(item, exc.status, exc.reason)
            return Outcome(exc.status, reason=exc.reason)
        try:
            return self._store(item, dataset)
        except OutOfSpace as exc:
            log.error("refused: %s", exc, extra=_ids(item))
            return Outcome(OUT_OF_RESOURCES, reason=str(exc))
        except Exception as exc:  # noqa: BLE001 - any failure must become a failure status
            log.exception("store failed", extra=_ids(item))
            return Outcome(PROCESSING_FAILURE, reason=f"{type(exc).__name__}: {exc}")

    def adopt(self, item: Received, path: Path) -> Outcome:
        """Record a spooled file the database lacks (a commit lost to a crash), keeping it."""
        try:
            dataset = _parse(item)
            _check_consistency(item, dataset)
        except Rejected as exc:
            return Outcome(exc.status, reason=exc.reason)
        return self._store(item, dataset, spooled=path)

    def _store(self, item: Received, dataset: Dataset, spooled: Path | None = None) -> Outcome:
        """The hot path: the spool answers "duplicate", one Core transaction records the rest.

        ORM sessions cost ~1.5 ms per instance and a separate duplicate query ~0.35 ms; a file
        already at the instance's spool path means the instance was stored before (recorded,
        or adopted by the spool recovery at the next start).
        """
        sop_uid = item.sop_instance_uid
        series_uid = str(dataset.SeriesInstanceUID)
        if spooled is not None:
            target = spooled
        else:
            target = self.layout.path_for(series_uid, sop_uid)
            check_floor(self.layout.root, len(item.data), self.min_free_bytes)
            if not store_new(target, item.data, self.layout.root / ".tmp"):
                log.info("duplicate instance answered Success, stored once", extra=_ids(item))
                return Outcome(SUCCESS, duplicate=True)
        try:
            with self.database.connection() as connection:
                row = _count_into_receiving_series(connection, series_uid, dataset)
                if row is None:
                    # First instance of the series, or a late one: rare, so the ORM may do it.
                    with Session(bind=connection) as session:
                        row = _open_series(session, dataset, item)
                    row = _count_by_id(connection, row, dataset)
                count_reached = _record(connection, row, item, dataset, target)
        except IntegrityError:
            # Recorded before under another spool path (or its file purged): stored once.
            if spooled is None:
                target.unlink(missing_ok=True)
            log.info("duplicate instance (already recorded) answered Success", extra=_ids(item))
            return Outcome(SUCCESS, duplicate=True)
        except BaseException:
            # Not recorded, not acknowledged: no file may stay behind to pass for a duplicate.
            if spooled is None:
                target.unlink(missing_ok=True)
            raise
        log.debug("stored", extra={**_ids(item), "series_uid": series_uid})
        return Outcome(SUCCESS, series_id=row.id, count_reached=count_reached)

    def _quarantine(self, item: Received, status: int, reason: str) -> None:
        name = f"{utcnow():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}"
        path: Path | None = self.layout.quarantine / f"{name}.dcm"
        try:
            check_floor(self.layout.quarantine, len(item.data), self.min_free_bytes)
            write_durably(path, item.data, self.layout.root / ".tmp")
            (self.layout.quarantine / f"{name}.reason.txt").write_text(
                f"status 0x{status:04X}\n{reason}\n", encoding="utf-8"
            )
        except OSError:
            log.exception("could not keep the refused dataset", extra=_ids(item))
            path = None
        except OutOfSpace:
            path = None
        try:
            with self.database.session() as session:
                session.add(
                    QuarantinedObject(
                        calling_ae=item.calling_ae,
                        peer=item.peer,
                        sop_instance_uid=item.sop_instance_uid[:64] or None,
                        status=status,
                        reason=reason,
                        path=str(path) if path else None,
                    )
                )
        except Exception:  # noqa: BLE001 - the refusal status is still answered
            log.exception("could not record the quarantined dataset", extra=_ids(item))
        log.warning("refused and quarantined: %s", reason, extra={**_ids(item), "status": status})


def _ids(item: Received) -> dict[str, object]:
    return {
        "sop_instance_uid": item.sop_instance_uid,
        "calling_ae": item.calling_ae,
        "association_id": item.association_id,
    }


def _parse(item: Received) -> Dataset:
    try:
        # Reading parses every element's tag and length, so a truncated or garbled stream fails
        # here; values are only converted when looked at (converting all cost ~2 ms/instance).
        dataset = pydicom.dcmread(io.BytesIO(item.data), defer_size=1024)
        len(dataset)
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OSError) as exc:
        raise Rejected(CANNOT_UNDERSTAND, f"unparseable dataset: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on garbage
        raise Rejected(CANNOT_UNDERSTAND, f"unparseable dataset: {type(exc).__name__}") from None
    return dataset


def _check_consistency(item: Received, dataset: Dataset) -> None:
    problems = []
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        value = str(dataset.get(keyword, "") or "")
        if not value:
            problems.append(f"{keyword} missing")
        elif len(value) > 64 or not _UID.match(value):
            problems.append(f"{keyword} is not a valid UID")
    if not problems:
        if str(dataset.SOPInstanceUID) != item.sop_instance_uid:
            problems.append("SOPInstanceUID differs from the C-STORE request's")
        if str(dataset.SOPClassUID) != item.sop_class_uid:
            problems.append("SOPClassUID differs from the C-STORE request's")
    problems.extend(_pixel_problems(dataset))
    if problems:
        raise Rejected(
            DATASET_DOES_NOT_MATCH_SOP_CLASS, "inconsistent dataset: " + "; ".join(problems)
        )


def _pixel_problems(dataset: Dataset) -> list[str]:
    if "PixelData" not in dataset:
        return []
    syntax = str(dataset.file_meta.get("TransferSyntaxUID", ""))
    element = dataset.get_item("PixelData")
    if syntax not in _NATIVE_SYNTAXES or element is None:
        return []
    try:
        expected = (
            int(dataset.Rows)
            * int(dataset.Columns)
            * int(dataset.get("SamplesPerPixel", 1))
            * int(dataset.get("NumberOfFrames", 1) or 1)
            * int(dataset.BitsAllocated)
            // 8
        )
    except (AttributeError, TypeError, ValueError):
        return ["pixel description (Rows, Columns, BitsAllocated) missing or invalid"]
    length = element.length if hasattr(element, "length") else len(element.value)
    if length < expected:
        return [f"PixelData holds {length} bytes, {expected} expected from the image description"]
    return []


@dataclass(frozen=True)
class _SeriesRow:
    id: int
    state: str
    generation: int
    instances: int
    expected_instances: int | None


_SERIES_COLUMNS = (
    Series.id,
    Series.state,
    Series.generation,
    Series.instances,
    Series.expected_instances,
)
_COUNT = (
    update(Series)
    .values(
        instances=Series.instances + 1,
        frames=Series.frames + bindparam("added_frames"),
        last_received=bindparam("now"),
    )
    .returning(*_SERIES_COLUMNS)
)
# Counting the instance also locks the series row (PostgreSQL) and tells whether it is still
# receiving, in one statement; the series columns come back after the increment.
_COUNT_INTO_RECEIVING = _COUNT.where(Series.series_uid == bindparam("uid")).where(
    Series.state == SeriesState.RECEIVING
)
_COUNT_BY_ID = _COUNT.where(Series.id == bindparam("series_id"))
_INSERT_INSTANCE = insert(Instance)
_ANNOUNCE = (
    update(Series)
    .where(Series.id == bindparam("series_id"))
    .values(expected_instances=bindparam("expected"), expected_source=bindparam("source"))
)


def _count_into_receiving_series(
    connection: Connection, series_uid: str, dataset: Dataset
) -> _SeriesRow | None:
    """The series after counting this instance; None when it is new or no longer receiving."""
    values = {"uid": series_uid, "added_frames": _frames(dataset), "now": utcnow()}
    row = connection.execute(_COUNT_INTO_RECEIVING, values).first()
    return None if row is None else _SeriesRow(*row)


def _count_by_id(connection: Connection, row: _SeriesRow, dataset: Dataset) -> _SeriesRow:
    values = {"series_id": row.id, "added_frames": _frames(dataset), "now": utcnow()}
    return _SeriesRow(*connection.execute(_COUNT_BY_ID, values).one())


def _record(
    connection: Connection, row: _SeriesRow, item: Received, dataset: Dataset, target: Path
) -> bool:
    """Record the instance in its counted series; True when the series reached its count."""
    connection.execute(
        _INSERT_INSTANCE,
        {
            "sop_instance_uid": item.sop_instance_uid,
            "series_id": row.id,
            "sop_class_uid": item.sop_class_uid,
            "transfer_syntax_uid": str(dataset.file_meta.TransferSyntaxUID),
            "instance_number": _int_or_none(dataset.get("InstanceNumber")),
            "frames": _frames(dataset),
            "path": str(target),
            "size_bytes": len(item.data),
            "calling_ae": item.calling_ae,
            "association_id": item.association_id,
            "received_at": utcnow(),
            "generation": row.generation,
        },
    )
    expected = row.expected_instances
    announced = _expectation(dataset, item.sop_class_uid)
    if announced is not None and announced[0] > (expected or 0):
        expected = announced[0]
        connection.execute(
            _ANNOUNCE, {"series_id": row.id, "expected": expected, "source": announced[1]}
        )
    return bool(expected and row.instances >= expected)


def _open_series(session: Session, dataset: Dataset, item: Received) -> _SeriesRow:
    """Create the series row, or reopen a finished one for a late instance, and lock it."""
    series_uid = str(dataset.SeriesInstanceUID)
    series = session.execute(
        select(Series).where(Series.series_uid == series_uid).with_for_update()
    ).scalar_one_or_none()
    if series is None:
        series = Series(
            series_uid=series_uid,
            study_uid=str(dataset.StudyInstanceUID),
            modality=str(dataset.get("Modality", "") or "") or None,
            sop_class_uid=item.sop_class_uid,
            description=str(dataset.get("SeriesDescription", "") or "")[:128] or None,
            calling_ae=item.calling_ae,
            state=SeriesState.RECEIVING,
            instances=0,
            frames=0,
            generation=0,
        )
        try:
            with session.begin_nested():
                session.add(series)
        except IntegrityError:  # another association created it first
            return _open_series(session, dataset, item)
    elif series.state != SeriesState.RECEIVING:
        reopen(session, series)
    session.flush()
    return _SeriesRow(
        series.id, series.state, series.generation, series.instances, series.expected_instances
    )


def _frames(dataset: Dataset) -> int:
    return max(_int_or_none(dataset.get("NumberOfFrames")) or 1, 1)


def _expectation(dataset: Dataset, sop_class_uid: str) -> tuple[int, str] | None:
    """How many instances the series announces, and where that figure comes from."""
    if sop_class_uid in ENHANCED_MULTIFRAME_CLASSES and dataset.get("NumberOfFrames"):
        return 1, f"enhanced object with {_frames(dataset)} frames"
    announced = _int_or_none(dataset.get("ImagesInAcquisition"))
    if announced and announced > 0:
        return announced, "ImagesInAcquisition"
    return None


def _int_or_none(value: object) -> int | None:
    try:
        return int(str(value)) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
