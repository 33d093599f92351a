"""C-STORE failure statuses that no retry can change fail the instance at once.

0xA9xx (data set does not match SOP class), 0xCxxx (cannot understand) and 0x0122 (SOP class
not supported) say the destination will never take these bytes: before, they were retried with
backoff up to ``max_attempts`` like a full disk. Now the row fails after that one attempt, with
the status in the job's reason; transient failures (0xA7xx out of resources, 0x0110 processing
failure, association failures) keep the backoff. The PACS is a pynetdicom SCP that answers
each instance with a chosen status (Orthanc and dcmtk's storescp cannot be told to).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path

import pydicom
import pytest

from dicomnode.config import Destination
from dicomnode.deliver.sender import (
    FAILURE,
    REFUSED,
    SUCCESS,
    WARNING,
    Result,
    Sender,
    outcome_of,
    permanent_failure,
)
from tests.conftest import free_port, require_tool
from tests.delivery.helpers import forward_rules, items_of, query, scripted_pacs
from tests.node.helpers import RunningNode, storescu
from tests.node.series_files import write_lowfield_series

SMALL = {"rows": 64, "pixel_spacing": 3.6, "slices": 8}
# status per instance, in InstanceNumber order; the rest get Success
STATUSES = [0xA900, 0xC211, 0x0122, 0xA700, 0x0110]
PERMANENT = {0xA900, 0xC211, 0x0122}


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (0x0000, SUCCESS),
        (0xB000, WARNING),
        (0x0001, WARNING),
        (0xA900, REFUSED),
        (0xA9FF, REFUSED),
        (0xC000, REFUSED),
        (0xCFFF, REFUSED),
        (0x0122, REFUSED),
        (0xA700, FAILURE),
        (0xA7FF, FAILURE),
        (0x0110, FAILURE),
        (0x0124, FAILURE),
        (0xA800, FAILURE),
        (None, FAILURE),
    ],
)
def test_outcome_of_each_status(status, outcome):
    assert outcome_of(status) == outcome
    if status is not None and outcome != SUCCESS:
        assert permanent_failure(status) == (outcome == REFUSED)


def choosy_scp(port: int, statuses: dict[str, int]) -> AbstractContextManager[list[str]]:
    """A storage SCP answering each SOP Instance UID with its status (Success if none)."""
    return scripted_pacs(
        port, lambda event: statuses.get(str(event.request.AffectedSOPInstanceUID), 0x0000)
    )


def _by_number(files: list[Path]) -> list[str]:
    headers = (pydicom.dcmread(f, stop_before_pixels=True) for f in files)
    return [
        uid for _, uid in sorted((int(d.InstanceNumber), str(d.SOPInstanceUID)) for d in headers)
    ]


def test_the_sender_tells_refusals_from_transient_failures(tmp_path, brain):
    files = write_lowfield_series(brain, tmp_path / "s", seed=71, **SMALL)
    uids = _by_number(files)
    chosen = dict(zip(uids, STATUSES, strict=False))
    port = free_port()
    results: list[Result] = []
    with choosy_scp(port, chosen):
        sender = Sender(
            "IQTNODE", Destination(name="p", ae_title="PACS", host="127.0.0.1", port=port)
        )
        sender.send(items_of(files), results.append)
    uid_of = {
        path: str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in files
    }
    outcomes = {uid_of[result.key]: result for result in results}  # items_of keys are paths
    for uid, status in chosen.items():
        result = outcomes[uid]
        assert result.status == status
        assert result.outcome == (REFUSED if status in PERMANENT else FAILURE)
        assert f"status 0x{status:04X}" in (result.error or "")
    assert [outcomes[uid].outcome for uid in uids[len(STATUSES) :]] == [SUCCESS] * 3


def test_the_outbox_fails_refused_instances_at_once_and_retries_the_rest(tmp_path, brain):
    require_tool("storescu")
    port = free_port()
    node = RunningNode(
        tmp_path / "node",
        free_port(),
        rules=forward_rules({"pacs": port}, max_attempts=3, initial_backoff=0.2, max_backoff=0.4),
    ).start()
    try:
        files = write_lowfield_series(brain, tmp_path / "s", seed=72, **SMALL)
        uids = _by_number(files)
        chosen = dict(zip(uids, STATUSES, strict=False))
        with choosy_scp(port, chosen) as seen:
            storescu(node.port, files)
            job = node.wait_for(
                lambda: next((j for j in node.jobs() if j["state"] == "failed"), None),
                what="the job to fail",
            )
        for uid in uids:
            status = chosen.get(uid)
            expected = 3 if status is not None and status not in PERMANENT else 1
            assert seen.count(uid) == expected, (hex(status or 0), seen.count(uid))
        sql = "select sop_instance_uid, state, attempts, last_status, last_error from deliveries"
        rows = {row[0]: row[1:] for row in query(node, sql)}
        for uid, status in chosen.items():
            state, attempts, last_status, last_error = rows[uid]
            assert (state, last_status) == ("failed", status)
            if status in PERMANENT:
                assert attempts == 1 and "not retried" in last_error
            else:
                assert attempts == 3 and "not retried" not in last_error
        assert {rows[uid][:3] for uid in uids[len(STATUSES) :]} == {("sent", 1, 0)}
        # the job names the first failed instance's status: the refusal, after one attempt
        assert "delivery failed after 1 attempt(s): 5 to pacs of 8" in job["reason"]
        assert "status 0xA900" in job["reason"] and "not retried" in job["reason"]
        log = node.log_path.read_text()
        assert "instance refused by the destination; not retried" in log
    finally:
        node.stop()
