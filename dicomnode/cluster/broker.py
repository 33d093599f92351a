"""The Celery application on RabbitMQ: one durable queue of job ids, and how to publish to it.

Everything about the broker is configured here so that the publisher (``serve``) and the
workers agree on the queue, the task name and the delivery guarantees:

- messages are persistent on a durable queue and published with publisher confirms, so a
  message the broker acknowledged survives a broker restart;
- ``task_acks_late`` with ``task_reject_on_worker_lost``: a message is acknowledged only after
  its job has an outcome in the database, and comes back to the queue when its worker dies;
- prefetch 1: a worker reserves only the job it runs, so an idle worker gets the next one;
- no result backend: the outcome is in PostgreSQL, the broker carries nothing else.
"""

from __future__ import annotations

import logging

from celery import Celery
from kombu import Exchange, Queue

from dicomnode.config import ClusterSettings

log = logging.getLogger("dicomnode.cluster.broker")

TASK_NAME = "dicomnode.enhance"
PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}


def make_app(settings: ClusterSettings, *, solo: bool = False) -> Celery:
    """The Celery app of the node's cluster settings; ``solo``: a worker with the solo pool.

    A solo worker runs its job in the thread that would send AMQP heartbeats, so its broker
    heartbeat is off (TCP keepalive still notices a dead peer); the lease in PostgreSQL, not
    the broker connection, decides whether a job is still being worked on.
    """
    app = Celery("dicomnode", broker=settings.broker_url, set_as_current=False)
    exchange = Exchange(settings.queue, type="direct", durable=True)
    app.conf.update(
        task_queues=[Queue(settings.queue, exchange, routing_key=settings.queue, durable=True)],
        task_default_queue=settings.queue,
        task_default_exchange=settings.queue,
        task_default_routing_key=settings.queue,
        task_routes={TASK_NAME: {"queue": settings.queue, "routing_key": settings.queue}},
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        # a lost broker connection does not stop a running job: the lease, not the connection,
        # says whether it is still ours (its message comes back and is dropped as held)
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_connection_retry=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_heartbeat=0 if solo else 30,
        broker_transport_options={"confirm_publish": True},
        broker_pool_limit=2,
    )
    return app


def publish(app: Celery, queue: str, job_id: int) -> None:
    """Send job ``job_id`` to the workers; raises when the broker did not confirm it."""
    app.send_task(
        TASK_NAME,
        args=[job_id],
        queue=queue,
        routing_key=queue,
        retry=True,
        retry_policy=PUBLISH_RETRY,
    )


def ready_messages(app: Celery, queue: str) -> int | None:
    """Messages waiting in ``queue`` (not yet delivered to a worker); None when unknown."""
    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
            _name, count, _consumers = connection.default_channel.queue_declare(
                queue=queue, passive=True
            )
            return int(count)
    except Exception as exc:  # noqa: BLE001 - unknown is an answer: the caller waits
        log.debug("queue depth unavailable: %s", exc)
        return None
