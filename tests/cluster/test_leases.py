"""Leases and claims on both databases: the rules of dicomnode.cluster.leases and the outbox
claims of dicomnode.deliver, without a broker (SQLite, the single-machine default, included)."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from db.migrate import upgrade
from db.models import Delivery, DeliveryState, Job, JobState, Series, utcnow
from db.session import Database
from dicomnode.cluster import leases
from dicomnode.config import ClusterSettings, parse_config
from dicomnode.jobs import transition

SETTINGS = ClusterSettings(lease_seconds=30, heartbeat_seconds=5, max_attempts=2)


class FakeRunner:
    """The runner's ``prepare`` as far as a lease cares: count the attempt, go processing."""

    def prepare(self, session, job, slot):  # type: ignore[no-untyped-def]
        job.attempts = (job.attempts or 0) + 1
        job.worker = slot.name
        transition(session, job, JobState.PROCESSING, f"on {slot.name}")
        return ("request", job.id)


class Slot:
    def __init__(self, name: str):
        self.name = name


@pytest.fixture
def database(database_url: str):  # type: ignore[no-untyped-def]
    db = Database(database_url)
    upgrade(db)
    yield db
    db.dispose()


def _queued_job(database: Database, uid: str = "1.2.3") -> int:
    with database.session() as session:
        series = Series(series_uid=uid, study_uid="1.2", state="complete")
        session.add(series)
        session.flush()
        job = Job(
            series_id=series.id,
            series_uid=uid,
            action="enhance",
            rule="r",
            destinations=["pacs"],
            state=JobState.QUEUED,
        )
        session.add(job)
        session.flush()
        return job.id


def _claim(database: Database, job_id: int, owner: str):  # type: ignore[no-untyped-def]
    return leases.claim(database, FakeRunner(), Slot(owner), job_id, owner, SETTINGS)  # type: ignore[arg-type]


def _job(database: Database, job_id: int) -> Job:
    with database.session() as session:
        return session.get(Job, job_id)


def _expire(database: Database, job_id: int) -> None:
    with database.session() as session:
        session.get(Job, job_id).lease_until = utcnow() - dt.timedelta(seconds=1)


def test_a_claimed_job_is_held_until_its_lease_expires_then_taken_over(database):
    job_id = _queued_job(database)
    assert _claim(database, job_id, "a") == ("request", job_id)
    job = _job(database, job_id)
    assert job.state == JobState.PROCESSING and job.lease_owner == "a" and job.attempts == 1
    assert job.published_at is None
    # a second worker (a redelivered message, a restarted node) never takes a live lease
    assert _claim(database, job_id, "b") is leases.Refusal.HELD
    assert leases.renew(database, {job_id: "a"}, 30) == set()
    _expire(database, job_id)
    assert _claim(database, job_id, "b") == ("request", job_id)
    job = _job(database, job_id)
    assert job.lease_owner == "b" and job.attempts == 2
    # the first worker finds out at its next renewal
    assert leases.renew(database, {job_id: "a"}, 30) == {job_id}


def test_a_job_that_loses_its_worker_every_time_fails_after_max_attempts(database):
    job_id = _queued_job(database)
    for owner in ("a", "b"):
        assert _claim(database, job_id, owner) == ("request", job_id)
        _expire(database, job_id)
    assert _claim(database, job_id, "c") is leases.Refusal.GONE
    job = _job(database, job_id)
    assert job.state == JobState.FAILED and job.reason.startswith("[attempts] claimed 2 time(s)")
    # `dicomnode jobs retry`: a person asks again, the claims count afresh and it needs a message
    from dicomnode.deliver.delivery import retry

    with database.session() as session:
        retry(session, job_id)
    job = _job(database, job_id)
    assert job.state == JobState.QUEUED and job.attempts == 0 and job.published_at is None
    assert _claim(database, job_id, "c") == ("request", job_id)


def test_finished_or_unknown_jobs_are_dropped_and_returned_jobs_need_a_message(database):
    job_id = _queued_job(database)
    assert _claim(database, 999, "a") is leases.Refusal.MISSING
    assert _claim(database, job_id, "a") == ("request", job_id)
    assert not leases.return_job(database, job_id, "someone-else", "no")
    assert leases.return_job(database, job_id, "a", "returned by a: draining")
    job = _job(database, job_id)
    assert job.state == JobState.QUEUED and job.lease_owner is None and job.published_at is None
    with database.session() as session:
        transition(session, session.get(Job, job_id), JobState.CANCELLED, "test")
    assert _claim(database, job_id, "a") is leases.Refusal.GONE


def test_two_senders_never_claim_the_same_outbox_rows(database, tmp_path):
    from dicomnode.deliver.delivery import DestinationWorker

    job_id = _queued_job(database)
    with database.session() as session:
        job = session.get(Job, job_id)
        job.state = JobState.STORED
        for i in range(10):
            session.add(
                Delivery(
                    job_id=job_id,
                    destination="pacs",
                    sop_instance_uid=f"1.2.3.{i}",
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.7",
                    transfer_syntax_uid="1.2.840.10008.1.2.1",
                    path=str(tmp_path / f"{i}.dcm"),
                    state=DeliveryState.PENDING,
                )
            )
    config = parse_config(
        {"destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 1}]}
    )
    one = DestinationWorker(database, config, config.destinations[0])
    two = DestinationWorker(database, config, config.destinations[0])
    two.owner = one.owner + "-other"  # another process or machine
    first, second = one.due(6), two.due(6)
    assert len(first) == 6 and len(second) == 4
    assert not {i.key for i in first} & {i.key for i in second}
    assert two.due(6) == []  # all held
    one.release_claims()
    assert sorted(i.key for i in two.due(10)) == sorted(i.key for i in first)
    with database.session() as session:
        owners = set(session.scalars(select(Delivery.claim_owner)))
    assert owners == {two.owner}
