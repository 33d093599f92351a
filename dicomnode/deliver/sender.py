"""The C-STORE sender (SCU): one association to one destination, many instances over it.

Files are sent as they lie in the spool: the dataset bytes after the file meta go on the wire
unchanged when the destination accepts the stored transfer syntax. Once per SOP class we propose
a fallback context offering explicit, then implicit, VR little endian, and for each (SOP class,
stored syntax) pair other than explicit VR little endian a context with that syntax alone. When
the stored syntax is not accepted, the dataset is decoded with pydicom (decompressed, keeping its
SOP Instance UID) and sent in the uncompressed syntax the destination accepted for the class:
explicit VR little endian if it accepted that, else implicit.

Why a plain pynetdicom sender managed only 40-60 instances/s into DCMTK-based receivers: Nagle's
algorithm held the tail of each dataset until the peer's delayed ACK (up to 40 ms), and the
association's reactor and DUL threads handed every message over through queues polled with
1 ms sleeps. With those tuned it still reached only 0.41x storescu, so the wire work now runs in
``dicomnode.net.scu``: one blocking socket, no threads: 0.79-0.85x storescu over one association,
1.14-1.20x over four (``bench/bench_send.py``).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.dsutils import encode
from pynetdicom.presentation import build_context

from dicomnode.config import Destination, TLSSettings
from dicomnode.net.scu import AssociationError, DatasetSource, StoreAssociation
from dicomnode.net.tls import client_context

log = logging.getLogger("dicomnode.deliver.sender")

MAX_CONTEXTS = 128

SUCCESS = "success"
WARNING = "warning"
FAILURE = "failure"
"""A failure another attempt may cure (out of resources, processing failure, no response)."""
REFUSED = "refused"
"""A failure status that says the same bytes will never be stored (``PERMANENT_FAILURE``): the
outbox fails the instance at once, with no further attempt."""
UNSENT = "unsent"
"""Not tried: the association was lost at an earlier instance of the batch (aborted, timed out,
closed), which alone counts the failed attempt; the outbox sends this one again without one."""
# C-STORE warning statuses (PS3.4 B.2.3): coercion, elements discarded, not validated
WARNING_STATUSES = {0x0001, 0xB000, 0xB006, 0xB007}
SOP_CLASS_NOT_SUPPORTED = 0x0122


def permanent_failure(status: int) -> bool:
    """C-STORE failure statuses that no retry can change (PS3.4 B.2.3, PS3.7 C): 0xA9xx data
    set does not match SOP class, 0xCxxx cannot understand, 0x0122 SOP class not supported.
    The others (0xA7xx out of resources, 0x0110 processing failure, ...) may pass later."""
    return (
        status == SOP_CLASS_NOT_SUPPORTED
        or (status & 0xFF00) == 0xA900
        or (status & 0xF000) == 0xC000
    )


@dataclass(frozen=True)
class Item:
    """One file to send; ``key`` comes back in its ``Result`` (the outbox row id)."""

    key: object
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


@dataclass(frozen=True)
class Result:
    key: object
    outcome: str  # success | warning | failure | refused | unsent
    status: int | None
    error: str | None = None
    converted: bool = False


class AssociationFailed(Exception):
    """No association (refused, unreachable, rejected): nothing was sent."""


def outcome_of(status: int | None) -> str:
    if status is None:
        return FAILURE
    if status == 0x0000:
        return SUCCESS
    if status in WARNING_STATUSES or (status & 0xF000) == 0xB000:
        return WARNING
    if permanent_failure(status):
        return REFUSED
    return FAILURE


def _tls_context(tls: TLSSettings) -> ssl.SSLContext:
    return client_context(tls.certificate, tls.private_key, tls.ca_certificates)


def propose_contexts(items: Iterable[Item]) -> list:
    """(class, stored syntax) contexts plus one uncompressed fallback per class, at most 128."""
    pairs: list[tuple[str, str]] = []
    classes: list[str] = []
    for item in items:
        pair = (item.sop_class_uid, item.transfer_syntax_uid)
        if pair not in pairs:
            pairs.append(pair)
        if item.sop_class_uid not in classes:
            classes.append(item.sop_class_uid)
    contexts = []
    for sop_class in classes:
        contexts.append(build_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]))
    for sop_class, syntax in pairs:
        if syntax not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            contexts.append(build_context(sop_class, [syntax]))
        elif syntax == ImplicitVRLittleEndian:
            contexts.append(build_context(sop_class, [ImplicitVRLittleEndian]))
    if len(contexts) > MAX_CONTEXTS:
        raise ValueError(f"{len(contexts)} presentation contexts needed, at most {MAX_CONTEXTS}")
    return contexts


def batch_fitting_contexts(items: Sequence[Item]) -> list[Item]:
    """The longest prefix of ``items`` whose contexts fit in one association."""
    chosen: list[Item] = []
    for item in items:
        try:
            propose_contexts([*chosen, item])
        except ValueError:
            break
        chosen.append(item)
    return chosen


class Sender:
    """Sends batches of spooled files to one destination, one association per batch."""

    def __init__(
        self,
        calling_ae: str,
        destination: Destination,
        connect_timeout: float = 10.0,
        dimse_timeout: float = 60.0,
    ):
        self.calling_ae = calling_ae
        self.destination = destination
        self.connect_timeout = connect_timeout
        self.dimse_timeout = dimse_timeout

    def send(
        self,
        items: Sequence[Item],
        on_result: Callable[[Result], None],
        should_stop: Callable[[], bool] = lambda: False,
    ) -> int:
        """Send ``items`` over one association, reporting each result as it comes.

        Stops between instances when ``should_stop()`` turns true (the rest stay unreported).
        When the association is lost on one instance (the peer aborts, stalls past the DIMSE
        timeout, closes), that instance is the ``FAILURE`` and every later one is ``UNSENT``:
        it was never put on the wire. Raises ``AssociationFailed`` when no association could be
        established. Returns how many items were reported.
        """
        if not items:
            return 0
        dest = self.destination
        try:
            assoc = StoreAssociation.open(
                dest.host,
                dest.port,
                self.calling_ae,
                dest.ae_title,
                propose_contexts(items),
                connect_timeout=self.connect_timeout,
                dimse_timeout=self.dimse_timeout,
                ssl_context=_tls_context(dest.tls) if dest.tls is not None else None,
            )
        except (AssociationError, OSError, ssl.SSLError) as exc:
            raise AssociationFailed(str(exc)) from None
        accepted = {pair: context_id for context_id, pair in assoc.accepted.items()}
        reported = 0
        message_id = 0
        try:
            for item in items:
                if should_stop():
                    break
                if not assoc.is_established:
                    on_result(Result(item.key, UNSENT, None, "association lost"))
                    reported += 1
                    continue
                message_id = (message_id % 65535) + 1
                on_result(self._send_one(assoc, accepted, item, message_id))
                reported += 1
        finally:
            assoc.release()
        return reported

    def _send_one(
        self,
        assoc: StoreAssociation,
        accepted: dict[tuple[str, str], int],
        item: Item,
        message_id: int,
    ) -> Result:
        converted = False
        try:
            context_id = accepted.get((item.sop_class_uid, item.transfer_syntax_uid))
            if context_id is not None:
                dataset = DatasetSource.from_file(item.path)
            else:
                fallback = next(
                    (
                        (accepted[(item.sop_class_uid, syntax)], syntax)
                        for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
                        if (item.sop_class_uid, syntax) in accepted
                    ),
                    None,
                )
                if fallback is None:
                    return Result(
                        item.key,
                        FAILURE,
                        None,
                        f"destination accepted no transfer syntax for {item.sop_class_uid} "
                        f"(stored as {item.transfer_syntax_uid})",
                    )
                context_id = fallback[0]
                dataset = DatasetSource(data=_converted(item.path, UID(fallback[1])))
                converted = True
        except Exception as exc:  # noqa: BLE001 - a bad file fails alone
            return Result(item.key, FAILURE, None, f"cannot prepare: {type(exc).__name__}: {exc}")
        try:
            response = assoc.store(
                context_id, item.sop_class_uid, item.sop_instance_uid, message_id, dataset
            )
        except AssociationError as exc:
            return Result(item.key, FAILURE, None, f"no response: {exc}")
        outcome = outcome_of(response.status)
        error = None
        if outcome != SUCCESS:
            error = f"status 0x{response.status:04X}"
            if response.error_comment:
                error += f": {response.error_comment}"
            if outcome == REFUSED:
                error += " (not retried: a retry cannot succeed)"
        return Result(item.key, outcome, response.status, error, converted)


def _converted(path: Path, syntax: UID) -> bytes:
    """Decode a stored file and encode it in an uncompressed little endian syntax."""
    dataset: Dataset = pydicom.dcmread(path)
    if dataset.file_meta.TransferSyntaxUID.is_compressed:
        # A change of transfer syntax is the same instance (PS3.5 10): pydicom would mint a new
        # SOP Instance UID by default, and the destination would refuse the mismatch (0xA900).
        dataset.decompress(generate_instance_uid=False)
    encoded = encode(dataset, syntax.is_implicit_VR, True, False)
    if encoded is None:
        raise ValueError("could not encode the dataset")
    return encoded
