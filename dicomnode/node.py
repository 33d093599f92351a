"""The running node: opens the database, migrates it, registers the released models, recovers
the spool and starts the SCP, the job runner, delivery and the background monitor (quiet-period
completion, retention). ``serve``, the demo and the tests use this."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom
from sqlalchemy import select, text

from db.migrate import upgrade
from db.models import Instance
from db.session import Database
from dicomnode.config import Config
from dicomnode.deliver.delivery import DeliveryService
from dicomnode.http import HealthServer
from dicomnode.net.scp import StoreSCP
from dicomnode.process.registry import RegistryError, sync_released
from dicomnode.process.runner import OUTPUTS_SUBDIR, JobRunner
from dicomnode.receive.assembly import SeriesAssembler
from dicomnode.receive.intake import Intake, Received
from dicomnode.receive.receivers import ReceiverPool
from dicomnode.receive.spool import SpoolLayout, clean_tmp, free_bytes
from dicomnode.receive.store_handler import IntakeHandler, listener_settings, max_dataset_bytes
from dicomnode.retention import purge

if TYPE_CHECKING:
    from dicomnode.cluster.reconciler import Reconciler

log = logging.getLogger("dicomnode.node")


def open_database(config: Config) -> Database:
    config.node.data_dir.mkdir(parents=True, exist_ok=True)
    return Database(config.node.resolved_database_url())


class Node:
    def __init__(self, config: Config):
        self.config = config
        node = config.node
        self.layout = SpoolLayout(node.spool_dir, node.quarantine_dir)
        self.database = open_database(config)
        self.intake = Intake(
            self.database,
            self.layout,
            int(node.min_free_mb * 2**20),
            max_dataset_bytes=max_dataset_bytes(config),
        )
        self.assembler = SeriesAssembler(
            self.database, config.rules, config.completion.quiet_seconds
        )
        # One listener in this process, or several receiver processes on one shared socket.
        self.scp: StoreSCP | None = None
        self.receivers: ReceiverPool | None = None
        if node.listener_processes() > 1:
            self.receivers = ReceiverPool(config, node.listener_processes())
        else:
            self.scp = StoreSCP(
                listener_settings(config), IntakeHandler(config, self.intake, self.assembler)
            )
        self.delivery = DeliveryService(self.database, config)
        # One machine: the in-process job runner. Several ([cluster] enabled): `dicomnode
        # worker` processes run the jobs, and this node publishes their ids to the broker.
        self.runner: JobRunner | None = None
        self.reconciler: Reconciler | None = None
        if config.cluster.enabled:
            from dicomnode.cluster.reconciler import Reconciler  # Celery only where it is used

            self.reconciler = Reconciler(self.database, config)
        else:
            self.runner = JobRunner(
                self.database, config, on_stored=self.delivery.wake, on_forward=self.delivery.wake
            )
        self.http = HealthServer(self)
        self.http_port: int | None = None
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None

    def start(self) -> None:
        self.layout.ensure()
        revision = upgrade(self.database)
        log.info("database ready", extra={"revision": revision, "dialect": self.database.dialect})
        removed = clean_tmp(self.layout.root / ".tmp")
        if removed:
            log.info("removed unacknowledged partial files", extra={"count": removed})
        adopted = self.recover_spool()
        if adopted:
            log.warning(
                "spooled files missing from the database re-recorded", extra={"count": adopted}
            )
        self.register_released_models()
        if self.receivers is not None:
            self.receivers.start()
        else:
            assert self.scp is not None
            self.scp.start()
        if self.runner is not None:
            self.runner.start()
        if self.reconciler is not None:
            self.reconciler.start()
        self.delivery.start()
        self._monitor = threading.Thread(target=self._monitor_loop, name="monitor", daemon=True)
        self._monitor.start()
        self.http_port = self.http.start()

    def stop(self) -> None:
        """Stop accepting associations, then let delivery commit what is in flight."""
        self._stop.set()
        if self.receivers is not None:
            self.receivers.stop()
        if self.scp is not None:
            self.scp.stop()
        self.http.stop()
        if self.runner is not None and not self.runner.stop():
            log.warning("job runner did not stop in time; interrupted jobs run again at start")
        if self.reconciler is not None:
            self.reconciler.stop()
        if not self.delivery.stop():
            log.warning("delivery did not stop in time; unrecorded sends will be repeated")
        if self._monitor is not None:
            self._monitor.join(timeout=10)
        self.database.dispose()

    @property
    def port(self) -> int:
        """The DICOM port actually listened on (the configured one, or the one given for 0)."""
        if self.receivers is not None:
            return self.receivers.port
        assert self.scp is not None
        return self.scp.port

    def health(self) -> dict[str, object]:
        """What /healthz and the systemd watchdog look at; ``healthy`` when every check holds."""
        checks: dict[str, object] = {}
        try:
            with self.database.session() as session:
                session.execute(text("SELECT 1"))
            checks["database"] = True
        except Exception as exc:  # noqa: BLE001
            checks["database"] = f"{type(exc).__name__}: {exc}"
        try:
            probe = self.layout.root / ".tmp" / f"healthz-{os.getpid()}.probe"
            probe.write_bytes(b"ok")
            probe.unlink()
            checks["spool_writable"] = True
        except OSError as exc:
            checks["spool_writable"] = f"{exc.strerror or exc}"
        try:
            free = free_bytes(self.layout.root)
            floor = int(self.config.node.min_free_mb * 2**20)
            checks["free_disk"] = True if free > floor else f"{free // 2**20} MiB free, below floor"
            checks["free_bytes"] = free
        except OSError as exc:
            checks["free_disk"] = str(exc)
        workers = {
            "monitor": self._monitor is not None and self._monitor.is_alive(),
            **{f"delivery-{n}": alive for n, alive in self.delivery.alive().items()},
            **(self.runner.alive() if self.runner is not None else {}),
            **(self.reconciler.alive() if self.reconciler is not None else {}),
            **(self.receivers.alive() if self.receivers is not None else {}),
        }
        checks["workers"] = workers
        healthy = all(
            checks[k] is True for k in ("database", "spool_writable", "free_disk")
        ) and all(workers.values())
        return {"healthy": healthy, **checks}

    def register_released_models(self) -> None:
        """Released weights become registered (and active where nothing is) with no manual step.

        A problem (e.g. a damaged package file) is logged, not fatal: intake and forwarding must
        keep working, and enhance jobs wait for a usable model or follow ``when_no_model``.
        """
        try:
            with self.database.session() as session:
                added = sync_released(session, self.config.node.data_dir)
            if added:
                log.info(
                    "released models registered",
                    extra={"models": [f"{m.name}@{m.version}/k{m.factor}" for m in added]},
                )
        except (RegistryError, OSError) as exc:
            log.error("released models could not be registered: %s", exc)

    def recover_spool(self) -> int:
        """Record any spooled file the database lacks (e.g. a commit lost to a power cut)."""
        on_disk = {p for p in self.layout.root.glob("*/*.dcm")}
        if not on_disk:
            return 0
        with self.database.session() as session:
            known = {Path(p) for p in session.scalars(select(Instance.path)) if p}
        adopted = 0
        for path in sorted(on_disk - known):
            data = path.read_bytes()
            header = pydicom.dcmread(path, stop_before_pixels=True)
            item = Received(
                data=data,
                sop_class_uid=str(header.SOPClassUID),
                sop_instance_uid=str(header.SOPInstanceUID),
                calling_ae="",
                peer="spool-recovery",
                association_id="recovery",
            )
            outcome = self.intake.adopt(item, path)
            if outcome.series_id is not None and not outcome.duplicate:
                adopted += 1
        return adopted

    def _monitor_loop(self) -> None:
        completion = self.config.completion
        retention = self.config.retention
        next_purge = time.monotonic()
        while not self._stop.wait(completion.check_interval_seconds):
            try:
                self.assembler.complete_quiet()
            except Exception:  # noqa: BLE001 - the monitor must outlive a bad moment
                log.exception("quiet-period check failed")
            if time.monotonic() >= next_purge:
                next_purge = time.monotonic() + retention.check_interval_seconds
                try:
                    purge(
                        self.database,
                        retention.days,
                        outputs_root=self.config.node.data_dir / OUTPUTS_SUBDIR,
                    )
                except Exception:  # noqa: BLE001
                    log.exception("retention purge failed")
