"""What the listener (``dicomnode.net.scp``) calls in the node: intake and series completion.

The network package knows nothing of the node; this module is the glue, built from the
configuration: ``listener_settings`` turns ``[node]`` into the listener's plain settings, and
``IntakeHandler`` answers the listener's questions (``dicomnode.net.handler.Handler``): which
source addresses may associate at all and who may associate (``[node.accept]``), what becomes
of an arrived instance (``Intake``, then completion by count), and what a release means
(completion by InstanceNumbers 1..N over the series the association touched).
"""

from __future__ import annotations

import logging
import threading

from dicomnode.config import Config
from dicomnode.net import tls
from dicomnode.net.handler import (
    AccessPolicy,
    Arrival,
    Association,
    Rejection,
    StoreStatus,
)
from dicomnode.net.scp import ListenerSettings
from dicomnode.receive.assembly import SeriesAssembler
from dicomnode.receive.intake import Intake, Received

log = logging.getLogger("dicomnode.receive.store_handler")


def max_dataset_bytes(config: Config) -> int:
    return int(config.node.max_dataset_mb * 2**20)


def listener_settings(config: Config) -> ListenerSettings:
    node = config.node
    context = None
    if node.tls is not None:
        context = tls.server_context(
            node.tls.certificate,
            node.tls.private_key,
            node.tls.ca_certificates,
            node.tls.require_client_certificate,
        )
    return ListenerSettings(
        ae_title=node.ae_title,
        bind_address=node.bind_address,
        port=node.port,
        max_pdu_size=node.max_pdu_size,
        network_timeout_seconds=node.network_timeout_seconds,
        association_request_timeout_seconds=node.association_request_timeout_seconds,
        max_associations=node.max_associations,
        max_pending_connections=node.max_pending_connections,
        max_dataset_bytes=max_dataset_bytes(config),
        ssl_context=context,
    )


class IntakeHandler:
    """The node's answer to the listener: access rules, intake, completion."""

    def __init__(self, config: Config, intake: Intake, assembler: SeriesAssembler):
        accept = config.node.accept
        self.access = AccessPolicy(
            config.node.ae_title, accept.calling_ae_titles, accept.networks()
        )
        self.intake = intake
        self.assembler = assembler
        self._touched: dict[str, set[int]] = {}  # association id -> series ids it stored into
        self._lock = threading.Lock()

    def address_allowed(self, peer: str) -> bool:
        """At TCP accept: a peer outside ``[node.accept] source_networks`` is served from the
        listener's small budget for refused connections, never from the pending slots."""
        return self.access.address_allowed(peer)

    def association_requested(self, association: Association) -> Rejection | None:
        return self.access.check(association)

    def instance_arrived(self, arrival: Arrival) -> StoreStatus:
        association = arrival.association
        item = Received(
            data=arrival.data,
            sop_class_uid=arrival.sop_class_uid,
            sop_instance_uid=arrival.sop_instance_uid,
            calling_ae=association.calling_ae,
            peer=association.peer,
            association_id=association.id,
            transfer_syntax_uid=arrival.transfer_syntax,
        )
        outcome = self.intake.receive(item)
        if outcome.series_id is not None and not outcome.duplicate:
            with self._lock:
                self._touched.setdefault(association.id, set()).add(outcome.series_id)
        if outcome.count_reached:
            try:
                self.assembler.after_store(outcome.series_id)
            except Exception:  # noqa: BLE001 - the instance is stored; the monitor retries
                log.exception(
                    "completion check failed",
                    extra={
                        "association_id": association.id,
                        "sop_instance_uid": arrival.sop_instance_uid,
                    },
                )
        return StoreStatus(outcome.status, outcome.reason)

    def association_ended(self, association: Association, released: bool) -> None:
        with self._lock:
            touched = self._touched.pop(association.id, set())
        if not released or not touched:
            return  # series an aborted association touched complete by count or quiet period
        try:
            self.assembler.after_release(touched)
        except Exception:  # noqa: BLE001 - quiet-period completion still applies
            log.exception(
                "completion after release failed", extra={"association_id": association.id}
            )
