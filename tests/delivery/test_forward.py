"""Forward rules end to end: storescu -> ``dicomnode serve`` -> Orthanc, checked through its REST
API; destinations down and coming up, restarts with retries pending, failure statuses, a PACS
that aborts on one instance, SIGTERM."""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from pathlib import Path

import pydicom
import pytest

from tests.conftest import free_port, require_tool
from tests.delivery.helpers import (
    dataset_body,
    delivered_events,
    forward_rules,
    job_states,
    query,
    scripted_pacs,
    spooled,
)
from tests.delivery.orthanc import Orthanc
from tests.node.helpers import RunningNode, storescu
from tests.node.series_files import write_lowfield_series

SMALL = {"rows": 64, "pixel_spacing": 3.6, "slices": 8}
OUT_OF_RESOURCES = 0xA700


def refusing_scp(port: int, status: int = OUT_OF_RESOURCES) -> AbstractContextManager[list[str]]:
    """A storage SCP that answers every C-STORE with a failure status (Orthanc 1.10 cannot:
    its ReceivedInstanceFilter drops instances but still answers Success)."""
    return scripted_pacs(port, lambda event: status)


def aborting_scp(port: int, abort_on: str) -> AbstractContextManager[list[str]]:
    """A storage SCP that takes every instance (Success) but aborts the association whenever
    ``abort_on`` arrives, as a PACS does that chokes on one dataset; yields the UIDs seen."""

    def answer(event) -> int:  # type: ignore[no-untyped-def]
        if str(event.request.AffectedSOPInstanceUID) == abort_on:
            event.assoc.abort()
        return 0x0000

    return scripted_pacs(port, answer)


@pytest.fixture(autouse=True)
def _tools() -> None:
    require_tool("storescu")


def _node(tmp_path: Path, destinations: dict[str, int], **delivery: object) -> RunningNode:
    return RunningNode(
        tmp_path / "node", free_port(), rules=forward_rules(destinations, **delivery)
    )


def _wait_job(node: RunningNode, state: str, timeout: float = 30.0) -> dict:
    return node.wait_for(
        lambda: next((j for j in node.jobs() if j["state"] == state), None),
        timeout=timeout,
        what=f"a job in state {state}",
    )


def test_forward_arrives_complete_and_byte_identical(tmp_path, brain, orthanc):
    node = _node(tmp_path, {"pacs": orthanc.dicom_port}).start()
    try:
        files = write_lowfield_series(brain, tmp_path / "s", seed=31)
        storescu(node.port, files)
        job = _wait_job(node, "delivered")
        assert job["action"] == "forward"
        stored = orthanc.instances()
        assert len(stored) == len(files) == 30
        spool = spooled(node)
        assert set(stored) == set(spool)
        for path in files:
            sent = dataset_body(path.read_bytes())
            uid = next(u for u, p in spool.items() if dataset_body(p.read_bytes()) == sent)
            # the dataset Orthanc stored is, byte for byte, the one the scanner sent
            assert dataset_body(orthanc.file(stored[uid])) == sent
        rows = query(node, "select state, attempts, last_status, converted from deliveries")
        assert rows == [("sent", 1, 0, 0)] * 30
        show = node.json_lines("jobs", "show", str(job["id"]))[0]
        assert [e["to"] for e in show["events"]][-2:] == ["stored", "delivered"]
        assert show["deliveries"][0]["instances"] == 30
    finally:
        node.stop()


def test_down_destination_never_blocks_the_other_and_gets_everything_later(
    tmp_path, brain, orthanc
):
    down = Orthanc(tmp_path / "second", aet="SECOND")  # its port has nothing listening yet
    node = _node(tmp_path, {"pacs": orthanc.dicom_port, "second": down.dicom_port}).start()
    try:
        files = write_lowfield_series(brain, tmp_path / "s", seed=32, **SMALL)
        storescu(node.port, files)
        node.wait_for(lambda: orthanc.count() == len(files), what="the first PACS to fill")
        node.wait_for(
            lambda: (
                query(node, "select min(attempts) from deliveries where destination = 'second'")[0][
                    0
                ]
                >= 2
            ),
            what="retries to the down destination",
        )
        assert list(job_states(node).values()) == ["stored"]
        errors = query(
            node, "select distinct last_error from deliveries where destination='second'"
        )
        assert "association failed" in errors[0][0]
        down.start()
        try:
            _wait_job(node, "delivered")
            assert down.count() == len(files)
        finally:
            down.stop()
        assert len(delivered_events(node)) == 1
        assert query(
            node, "select count(*) from deliveries where state = 'sent' and last_status = 0"
        ) == [(2 * len(files),)]
    finally:
        node.stop()


def test_restart_with_a_retry_pending_delivers_once(tmp_path, brain):
    pacs = Orthanc(tmp_path / "pacs")
    node = _node(tmp_path, {"pacs": pacs.dicom_port}, initial_backoff=1.5, max_backoff=3)
    node.start()
    files = write_lowfield_series(brain, tmp_path / "s", seed=33, **SMALL)
    try:
        storescu(node.port, files)
        node.wait_for(
            lambda: query(node, "select min(attempts) from deliveries")[0][0] == 1,
            what="a failed first attempt",
        )
    finally:
        node.stop()
    assert node.process.returncode == 0
    pacs.start()
    try:
        node.start()
        try:
            _wait_job(node, "delivered")
        finally:
            node.stop()
        assert pacs.count() == len(files)
        assert query(node, "select state, attempts from deliveries") == [("sent", 2)] * len(files)
        assert len(delivered_events(node)) == 1
    finally:
        pacs.stop()


def test_failure_statuses_fail_the_job_and_retry_delivers_after_the_fix(tmp_path, brain):
    pacs = Orthanc(tmp_path / "pacs")
    node = _node(tmp_path, {"pacs": pacs.dicom_port}, max_attempts=2, initial_backoff=0.2)
    node.start()
    try:
        files = write_lowfield_series(brain, tmp_path / "s", seed=34, **SMALL)
        with refusing_scp(pacs.dicom_port) as seen:
            storescu(node.port, files)
            job = _wait_job(node, "failed")
        assert len(seen) == 2 * len(files)  # every instance tried twice, as configured
        assert "delivery failed after 2 attempt(s): 8 to pacs of 8" in job["reason"]
        assert "status 0xA700" in job["reason"]
        rows = query(node, "select state, attempts, last_status from deliveries")
        assert rows == [("failed", 2, OUT_OF_RESOURCES)] * len(files)
        pacs.start()  # the cause is fixed: the real PACS answers on that port
        try:
            result = node.cli("jobs", "retry", str(job["id"]))
            assert result.returncode == 0, result.stderr
            assert "8 delivery(ies) re-armed" in result.stdout
            _wait_job(node, "delivered")
            assert pacs.count() == len(files)
        finally:
            pacs.stop()
        events = node.json_lines("jobs", "show", str(job["id"]))[0]["events"]
        assert [e["to"] for e in events][-4:] == ["stored", "failed", "stored", "delivered"]
        again = node.cli("jobs", "retry", str(job["id"]))
        assert again.returncode == 1 and "only failed" in again.stderr
    finally:
        node.stop()


def test_an_instance_that_aborts_the_association_alone_walks_to_max_attempts(tmp_path, brain):
    """Issue 14: the PACS aborts the association on the third of eight instances, every time.
    That instance alone counts attempts and fails; the five behind it in the batch were never
    sent, so they go again at once without an attempt counted, and arrive after one try."""
    port = free_port()
    node = _node(tmp_path, {"pacs": port}, max_attempts=2, initial_backoff=0.2)
    node.start()
    try:
        files = write_lowfield_series(brain, tmp_path / "s", seed=35, **SMALL)
        by_number = sorted(
            (int(d.InstanceNumber), str(d.SOPInstanceUID))
            for d in (pydicom.dcmread(f, stop_before_pixels=True) for f in files)
        )
        chosen = by_number[2][1]  # the outbox sends in instance order
        with aborting_scp(port, chosen) as seen:
            storescu(node.port, files)
            job = _wait_job(node, "failed")
        assert seen.count(chosen) == 2  # tried twice, as configured
        assert len(seen) == 2 + len(files) - 1  # every other instance sent exactly once
        assert "delivery failed after 2 attempt(s): 1 to pacs of 8" in job["reason"]
        assert "aborted" in job["reason"]
        sql = "select sop_instance_uid, state, attempts from deliveries"
        rows = {uid: (state, attempts) for uid, state, attempts in query(node, sql)}
        assert rows.pop(chosen) == ("failed", 2)
        assert set(rows.values()) == {("sent", 1)}, rows
        assert len(rows) == len(files) - 1
    finally:
        node.stop()


def test_sigterm_during_a_transfer_loses_nothing(tmp_path, brain, orthanc):
    node = _node(tmp_path, {"pacs": orthanc.dicom_port}).start()
    files = []
    for seed in range(4):
        files += write_lowfield_series(brain, tmp_path / f"s{seed}", seed=40 + seed)
    try:
        # deliveries stay parked until all four series are in, then go out in one batch
        query(node, "select 1")
        storescu(node.port, files)
        node.wait_for(
            lambda: 0 < query(node, "select count(*) from deliveries where state='sent'")[0][0],
            timeout=60,
            what="the transfer to start",
        )
    finally:
        started = time.monotonic()
        node.stop()
        stop_seconds = time.monotonic() - started
    assert node.process.returncode == 0
    assert stop_seconds < 15
    states = dict(query(node, "select state, count(*) from deliveries group by state"))
    assert "failed" not in states
    sent = {u for (u,) in query(node, "select sop_instance_uid from deliveries where state='sent'")}
    assert sent <= set(orthanc.instances())  # nothing recorded as sent is missing at the PACS
    node.start()
    try:
        node.wait_for(
            lambda: sorted(job_states(node).values()) == ["delivered"] * 4,
            timeout=60,
            what="all jobs delivered after the restart",
        )
    finally:
        node.stop()
    assert set(orthanc.instances()) == set(spooled(node)) and orthanc.count() == len(files)
    assert len(delivered_events(node)) == 4
