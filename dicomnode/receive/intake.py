"""Intake of one received instance: validate, store durably, record, and answer with a status.

Kept free of pynetdicom so that the order that guarantees durability (validate, fsync, rename,
commit, only then Success) is visible in one place and testable without a network.
"""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Dialect, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.models import Instance, QuarantinedObject, Series, SeriesState, utcnow
from db.prepared import PreparedStatement
from db.session import Database
from dicomnode.receive.assembly import ENHANCED_MULTIFRAME_CLASSES, reopen
from dicomnode.receive.header import (
    ENCAPSULATED_SYNTAXES,
    NATIVE_SYNTAXES,
    InstanceHeader,
    NotInTransferSyntax,
    TooLarge,
    UnreadableInstance,
    read_header,
)
from dicomnode.receive.spool import (
    OutOfSpace,
    SpoolLayout,
    check_floor,
    store_new,
    write_durably,
)

log = logging.getLogger("dicomnode.receive.intake")

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110

_UID = re.compile(r"^(0|[1-9]\d*)(\.(0|[1-9]\d*))*$")
# IS values (PS3.5 6.2) and the database's INTEGER columns (PostgreSQL: 4 bytes).
_SIGNED_32_BIT = range(-(2**31), 2**31)
# Photometric interpretations whose native pixels hold two samples' worth per pixel.
_HALF_CHROMA = {"YBR_FULL_422", "YBR_PARTIAL_422"}


@dataclass(frozen=True)
class Received:
    """One C-STORE request as it came off the wire."""

    data: bytes  # Part 10 encoding: preamble, file meta (the listener's), dataset as sent
    sop_class_uid: str
    sop_instance_uid: str
    calling_ae: str
    peer: str
    association_id: str
    # The presentation context's transfer syntax. When given, the file meta must name it;
    # either way the recorded syntax is the meta's, never a value from the dataset.
    transfer_syntax_uid: str | None = None


@dataclass(frozen=True)
class Outcome:
    status: int
    series_id: int | None = None
    duplicate: bool = False
    reason: str | None = None
    count_reached: bool = False  # the series holds its expected number of instances


class _StoredMeanwhile(Exception):
    """A purged instance another association stored again first."""


class Rejected(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Intake:
    def __init__(
        self,
        database: Database,
        layout: SpoolLayout,
        min_free_bytes: int,
        max_dataset_bytes: int | None = None,
    ):
        """``max_dataset_bytes`` (``[node] max_dataset_mb``) caps a deflated dataset's inflation;
        None: the setting's default."""
        self.database = database
        self.layout = layout
        self.min_free_bytes = min_free_bytes
        self.max_dataset_bytes = max_dataset_bytes
        for statement in (_COUNT_INTO_RECEIVING, _COUNT_BY_ID, _INSERT_INSTANCE, _ANNOUNCE):
            statement.prepare(database.engine.dialect)

    def receive(self, item: Received) -> Outcome:
        try:
            header = _parse(item, self.max_dataset_bytes)
            _check_encoding(item, header)
            _check_consistency(item, header)
        except Rejected as exc:
            self._quarantine(item, exc.status, exc.reason)
            return Outcome(exc.status, reason=exc.reason)
        if header.invalid:  # a scanner's slip in an optional attribute costs no image
            log.warning("stored as absent: %s", "; ".join(header.invalid), extra=_ids(item))
        try:
            return self._store(item, header)
        except OutOfSpace as exc:
            log.error("refused: %s", exc, extra=_ids(item))
            return Outcome(OUT_OF_RESOURCES, reason=str(exc))
        except Exception as exc:  # noqa: BLE001 - any failure must become a failure status
            log.exception("store failed", extra=_ids(item))
            return Outcome(PROCESSING_FAILURE, reason=f"{type(exc).__name__}: {exc}")

    def adopt(self, item: Received, path: Path) -> Outcome:
        """Record a spooled file the database lacks (a commit lost to a crash), keeping it."""
        try:
            header = _parse(item, self.max_dataset_bytes)
            _check_encoding(item, header)
            _check_consistency(item, header)
        except Rejected as exc:
            return Outcome(exc.status, reason=exc.reason)
        return self._store(item, header, spooled=path)

    def _store(
        self, item: Received, header: InstanceHeader, spooled: Path | None = None
    ) -> Outcome:
        """The hot path: the spool answers "duplicate", one transaction records the rest.

        ORM sessions cost ~1.5 ms per instance, Core statements ~0.2 ms each and a separate
        duplicate query ~0.35 ms, hence prepared statements on the driver. A file already at
        the instance's spool path means the instance was stored before (recorded, or adopted
        by the spool recovery at the next start).

        An instance already recorded (the insert's unique key) is looked at on a slow path
        (``_record_again``): one whose file retention purged is stored again; one whose file is
        still there is a duplicate, stored once.
        """
        sop_uid = item.sop_instance_uid
        series_uid = header.series_uid
        if spooled is not None:
            target = spooled
        else:
            target = self.layout.path_for(series_uid, sop_uid)
            check_floor(self.layout.root, len(item.data), self.min_free_bytes)
            if not store_new(target, item.data, self.layout.root / ".tmp"):
                log.info("duplicate instance answered Success, stored once", extra=_ids(item))
                return Outcome(SUCCESS, duplicate=True)
        try:
            try:
                recorded = self._record_in_receiving_series(item, header, target)
                if recorded is None:
                    recorded = self._record_opening_series(item, header, target)
            except IntegrityError:
                recorded = self._record_again(item, header, target)
            if recorded is None:
                # Recorded before with its file still there, under another spool path or this
                # one (a file lost otherwise than by retention is written back): stored once.
                if spooled is None and not _recorded_at(self.database, item, target):
                    target.unlink(missing_ok=True)
                log.info("duplicate instance (already recorded) answered Success", extra=_ids(item))
                return Outcome(SUCCESS, duplicate=True)
            row, count_reached = recorded
        except BaseException:
            # Not recorded, not acknowledged: no file may stay behind to pass for a duplicate.
            if spooled is None:
                target.unlink(missing_ok=True)
            raise
        log.debug("stored", extra={**_ids(item), "series_uid": series_uid})
        return Outcome(SUCCESS, series_id=row.id, count_reached=count_reached)

    def _record_in_receiving_series(
        self, item: Received, header: InstanceHeader, target: Path
    ) -> tuple[_SeriesRow, bool] | None:
        """The common case, on the driver: count into the receiving series, insert the instance.

        None, with nothing written, when the series is new or no longer receiving.
        """
        dialect = self.database.engine.dialect
        with self.database.driver_transaction() as driver:
            values = {"uid": header.series_uid, "added_frames": header.frames, "now": utcnow()}
            found = _COUNT_INTO_RECEIVING.first(driver, dialect, values)
            if found is None:
                return None
            row = _SeriesRow(*found)
            return row, _record(driver, dialect, row, item, header, target)

    def _record_opening_series(
        self, item: Received, header: InstanceHeader, target: Path
    ) -> tuple[_SeriesRow, bool]:
        """First instance of a series, or a late one reopening it: once per series, on Core."""
        with self.database.connection() as connection:
            series_id = _open_series(connection, header, item)
            driver = connection.connection.driver_connection
            dialect = connection.dialect
            values = {"series_id": series_id, "added_frames": header.frames, "now": utcnow()}
            row = _SeriesRow(*_COUNT_BY_ID.first(driver, dialect, values))
            return row, _record(driver, dialect, row, item, header, target)

    def _record_again(
        self, item: Received, header: InstanceHeader, target: Path
    ) -> tuple[_SeriesRow, bool] | None:
        """An instance recorded before: stored again when retention purged its file.

        Retention keeps the row of a purged instance with path NULL. A scanner that sends the
        series again after ``[retention] days`` must have it processed again ("never lose a
        study"), so the row takes the new file and the series reopens as for a late instance
        (``assembly.reopen``, which counts a purged series afresh); its next completion queues
        a new job. None, with nothing written, when the row still has its file: a duplicate.
        The series row is locked before the instance row, in the order of the hot path and of
        retention.
        """
        with self.database.connection() as connection:
            driver = connection.connection.driver_connection
            found = _FIND_INSTANCE.first(driver, connection.dialect, {"uid": item.sop_instance_uid})
        if found is None:  # the unique key refused the insert, yet no row holds the UID
            raise RuntimeError("instance neither recorded nor recordable")
        if found[1] is not None:
            return None
        try:
            with self.database.connection() as connection:
                series_id = _open_series(connection, header, item)
                driver = connection.connection.driver_connection
                dialect = connection.dialect
                found = _LOCK_INSTANCE.first(driver, dialect, {"uid": item.sop_instance_uid})
                if found is None or found[1] is not None:
                    raise _StoredMeanwhile  # by another association: undo the reopening
                values = {"series_id": series_id, "added_frames": header.frames, "now": utcnow()}
                row = _SeriesRow(*_COUNT_BY_ID.first(driver, dialect, values))
                count_reached = _record(
                    driver, dialect, row, item, header, target, instance_id=int(found[0])
                )
        except _StoredMeanwhile:
            return None
        log.info(
            "instance purged by retention received again: stored again",
            extra={**_ids(item), "series_uid": header.series_uid},
        )
        return row, count_reached

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


def _recorded_at(database: Database, item: Received, target: Path) -> bool:
    """Whether the instance's row names ``target`` as its file."""
    with database.connection() as connection:
        driver = connection.connection.driver_connection
        found = _FIND_INSTANCE.first(driver, connection.dialect, {"uid": item.sop_instance_uid})
    return found is not None and found[1] == str(target)


def _ids(item: Received) -> dict[str, object]:
    return {
        "sop_instance_uid": item.sop_instance_uid,
        "calling_ae": item.calling_ae,
        "association_id": item.association_id,
    }


def _parse(item: Received, max_inflated_bytes: int | None) -> InstanceHeader:
    try:
        return read_header(item.data, max_inflated_bytes)
    except TooLarge as exc:
        raise Rejected(OUT_OF_RESOURCES, f"dataset too large: {exc}") from None
    except NotInTransferSyntax as exc:
        raise Rejected(CANNOT_UNDERSTAND, f"not in the negotiated transfer syntax: {exc}") from None
    except UnreadableInstance as exc:
        raise Rejected(CANNOT_UNDERSTAND, f"unparseable dataset: {exc}") from None


def _check_encoding(item: Received, header: InstanceHeader) -> None:
    """The dataset as the negotiated transfer syntax encodes it (0xC000 otherwise)."""
    syntax = header.transfer_syntax_uid
    problems = []
    if item.transfer_syntax_uid is not None and syntax != item.transfer_syntax_uid:
        problems.append("file meta TransferSyntaxUID differs from the presentation context's")
    elif header.has_pixel_data:
        if syntax in NATIVE_SYNTAXES and header.pixel_data_bytes is None:
            problems.append("PixelData is encapsulated (undefined length) on a native syntax")
        elif syntax in ENCAPSULATED_SYNTAXES and not header.pixel_data_encapsulated:
            problems.append("PixelData is not encapsulated (native pixels) on a compressed syntax")
    if problems:
        raise Rejected(
            CANNOT_UNDERSTAND, "not in the negotiated transfer syntax: " + "; ".join(problems)
        )


def _check_consistency(item: Received, header: InstanceHeader) -> None:
    problems = []
    uids = {
        "SOPClassUID": header.sop_class_uid,
        "SOPInstanceUID": header.sop_instance_uid,
        "StudyInstanceUID": header.study_uid,
        "SeriesInstanceUID": header.series_uid,
    }
    for keyword, value in uids.items():
        if not value:
            problems.append(f"{keyword} missing")
        elif len(value) > 64 or not _UID.match(value):
            problems.append(f"{keyword} is not a valid UID")
    if not problems:
        if header.sop_instance_uid != item.sop_instance_uid:
            problems.append("SOPInstanceUID differs from the C-STORE request's")
        if header.sop_class_uid != item.sop_class_uid:
            problems.append("SOPClassUID differs from the C-STORE request's")
    integers = {
        "InstanceNumber": header.instance_number,
        "ImagesInAcquisition": header.images_in_acquisition,
        "NumberOfFrames": header.number_of_frames,
    }
    for keyword, number in integers.items():
        if number is not None and number not in _SIGNED_32_BIT:
            problems.append(f"{keyword} outside the signed 32-bit range of IS")
    problems.extend(_pixel_problems(header))
    if problems:
        raise Rejected(
            DATASET_DOES_NOT_MATCH_SOP_CLASS, "inconsistent dataset: " + "; ".join(problems)
        )


def _pixel_problems(header: InstanceHeader) -> list[str]:
    """An image (Rows and Columns) carries its pixels; native ones as many as it describes."""
    if header.rows is None and header.columns is None and not header.has_pixel_data:
        return []
    if not header.has_pixel_data:
        if header.has_other_image_data:  # float pixels, spectroscopy: not Pixel Data
            return []
        return ["PixelData missing from an image (Rows, Columns present)"]
    if header.pixel_data_bytes is None or header.transfer_syntax_uid not in NATIVE_SYNTAXES:
        return []  # encapsulated: checked against the syntax in _check_encoding
    if not (header.rows and header.columns and header.bits_allocated):
        return ["pixel description (Rows, Columns, BitsAllocated) missing or invalid"]
    samples = header.samples_per_pixel or 1
    if samples == 3 and header.photometric_interpretation in _HALF_CHROMA:
        samples = 2  # PS3.3 C.7.6.3.1.2: Cb and Cr at half horizontal resolution
    bits = header.rows * header.columns * samples * header.frames * header.bits_allocated
    expected = (bits + 7) // 8
    if header.pixel_data_bytes not in (expected, expected + expected % 2):  # even padding
        return [
            f"PixelData holds {header.pixel_data_bytes} bytes, {expected} expected from the "
            "image description"
        ]
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
_COUNT_INTO_RECEIVING = PreparedStatement(
    _COUNT.where(Series.series_uid == bindparam("uid")).where(Series.state == SeriesState.RECEIVING)
)
_COUNT_BY_ID = PreparedStatement(_COUNT.where(Series.id == bindparam("series_id")))
_INSTANCE_COLUMNS = (
    "sop_instance_uid",
    "series_id",
    "sop_class_uid",
    "transfer_syntax_uid",
    "instance_number",
    "frames",
    "path",
    "size_bytes",
    "calling_ae",
    "association_id",
    "received_at",
    "generation",
)
_INSERT_INSTANCE = PreparedStatement(
    insert(Instance).values({name: bindparam(name) for name in _INSTANCE_COLUMNS})
)
# A purged instance stored again: its row takes the new file and the rest of this reception.
_RESTORE_INSTANCE = PreparedStatement(
    update(Instance)
    .where(Instance.id == bindparam("instance_id"))
    .values({name: bindparam(f"new_{name}") for name in _INSTANCE_COLUMNS})
)
_FIND_INSTANCE = PreparedStatement(
    select(Instance.id, Instance.path).where(Instance.sop_instance_uid == bindparam("uid"))
)
_LOCK_INSTANCE = PreparedStatement(
    select(Instance.id, Instance.path)
    .where(Instance.sop_instance_uid == bindparam("uid"))
    .with_for_update()
)
_FIND_SERIES = (
    select(Series.id, Series.state).where(Series.series_uid == bindparam("uid")).with_for_update()
)
_CREATE_SERIES = (
    insert(Series)
    .values(
        series_uid=bindparam("series_uid"),
        study_uid=bindparam("study_uid"),
        modality=bindparam("modality"),
        sop_class_uid=bindparam("sop_class_uid"),
        description=bindparam("description"),
        calling_ae=bindparam("calling_ae"),
        state=SeriesState.RECEIVING,
        instances=0,
        frames=0,
        generation=0,
        first_received=bindparam("now"),
        last_received=bindparam("now"),
    )
    .returning(Series.id)
)
_ANNOUNCE = PreparedStatement(
    update(Series)
    .where(Series.id == bindparam("series_id"))
    .values(expected_instances=bindparam("expected"), expected_source=bindparam("source"))
)


def _record(
    driver: Any,
    dialect: Dialect,
    row: _SeriesRow,
    item: Received,
    header: InstanceHeader,
    target: Path,
    instance_id: int | None = None,
) -> bool:
    """Record the instance in its counted series; True when the series reached its count.

    ``instance_id``: the row of a purged instance, which takes this reception instead of a
    new row.
    """
    values = {
        "sop_instance_uid": item.sop_instance_uid,
        "series_id": row.id,
        "sop_class_uid": item.sop_class_uid,
        "transfer_syntax_uid": header.transfer_syntax_uid,
        "instance_number": header.instance_number,
        "frames": header.frames,
        "path": str(target),
        "size_bytes": len(item.data),
        "calling_ae": item.calling_ae,
        "association_id": item.association_id,
        "received_at": utcnow(),
        "generation": row.generation,
    }
    if instance_id is None:
        _INSERT_INSTANCE.rows(driver, dialect, values)
    else:
        restored = {f"new_{name}": value for name, value in values.items()}
        _RESTORE_INSTANCE.rows(driver, dialect, {"instance_id": instance_id, **restored})
    expected = row.expected_instances
    announced = _expectation(header, item.sop_class_uid)
    if announced is not None and announced[0] > (expected or 0):
        expected = announced[0]
        _ANNOUNCE.rows(
            driver, dialect, {"series_id": row.id, "expected": expected, "source": announced[1]}
        )
    return bool(expected and row.instances >= expected)


def _open_series(connection: Connection, header: InstanceHeader, item: Received) -> int:
    """Create the series row, or reopen a finished one for a late instance; lock it."""
    while True:
        found = connection.execute(_FIND_SERIES, {"uid": header.series_uid}).first()
        if found is not None:
            break
        try:
            with connection.begin_nested():
                return int(
                    connection.execute(
                        _CREATE_SERIES,
                        {
                            "series_uid": header.series_uid,
                            "study_uid": header.study_uid,
                            "modality": header.modality[:16] or None,
                            "sop_class_uid": item.sop_class_uid,
                            "description": header.series_description[:128] or None,
                            "calling_ae": item.calling_ae,
                            "now": utcnow(),
                        },
                    ).scalar_one()
                )
        except IntegrityError:  # another association created it first: lock that one
            continue
    if found.state != SeriesState.RECEIVING:
        with Session(bind=connection) as session:  # rare: a late instance
            series = session.get(Series, found.id)
            assert series is not None
            reopen(session, series)
            session.flush()
    return int(found.id)


def _expectation(header: InstanceHeader, sop_class_uid: str) -> tuple[int, str] | None:
    """How many instances the series announces, and where that figure comes from."""
    if sop_class_uid in ENHANCED_MULTIFRAME_CLASSES and header.number_of_frames:
        return 1, f"enhanced object with {header.frames} frames"
    announced = header.images_in_acquisition
    if announced and announced > 0:
        return announced, "ImagesInAcquisition"
    return None
