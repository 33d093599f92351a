"""Receiver processes: several DICOM listeners, one per core, accepting on one shared socket.

Why processes: intake is Python work (parsing the dataset, SQL) between two fsyncs, and the GIL
holds one process to about one core however many associations it serves. With four scanners
sending at once, one process used ~1.1 of 2 cores (``bench/bench_intake.py``). The parent keeps
everything else (migrations, spool recovery, jobs, delivery, HTTP); each child runs only a
``StoreSCP`` with its own database connections. Series completion is decided in the database,
so it does not matter which process received which instance.

``max_associations`` and ``max_pending_connections`` hold for the node, not per process: the
processes count in one shared table (``dicomnode.net.limits.Slots``, a memory file whose
descriptor they inherit), so a connection is refused only when the node as a whole is full,
whichever process accepted it. When a receiver dies, its row is cleared before it is replaced.

    python -m dicomnode.receive.receivers --fd N --slots-fd S --processes P --index I
        --ready-fd R --parent PID
        (started by ``ReceiverPool``, the configuration arrives as JSON on stdin)
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time

from dicomnode.config import Config
from dicomnode.net.limits import Slots

log = logging.getLogger("dicomnode.receive.receivers")

READY_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 20.0  # a child's own stop takes at most ~15 s (scp.STOP_JOIN_SECONDS + 5)
SUPERVISE_SECONDS = 1.0
RESTART_BACKOFF_SECONDS = 5.0
PR_SET_PDEATHSIG = 1


class ReceiverError(Exception):
    """A receiver process could not be started."""


class _Child:
    def __init__(self, index: int, process: subprocess.Popen[bytes], started: float):
        self.index = index
        self.process = process
        self.started = started


class ReceiverPool:
    """Starts, watches and stops the receiver processes of a node."""

    def __init__(self, config: Config, processes: int):
        self.config = config
        self.processes = processes
        self._socket: socket.socket | None = None
        self._slots: Slots | None = None
        self._children: list[_Child] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._socket is not None
        return int(self._socket.getsockname()[1])

    def start(self) -> None:
        from dicomnode.net.scp import listening_socket

        node = self.config.node
        self._stopping.clear()
        self._socket = listening_socket(node.bind_address, node.port)
        self._slots = Slots.create(
            self.processes, node.max_pending_connections, node.max_associations
        )
        try:
            self._children = [self._spawn(index) for index in range(self.processes)]
        except ReceiverError:
            self.stop()
            raise
        self._supervisor = threading.Thread(
            target=self._supervise, name="receiver-supervisor", daemon=True
        )
        self._supervisor.start()
        log.info(
            "receiver processes started",
            extra={
                "processes": self.processes,
                "port": self.port,
                "max_associations": node.max_associations,
                "max_pending_connections": node.max_pending_connections,
                "pids": [child.process.pid for child in self._children],
            },
        )

    def _spawn(self, index: int) -> _Child:
        assert self._socket is not None and self._slots is not None
        fd = self._socket.fileno()
        slots_fd = self._slots.fd
        ready_read, ready_write = os.pipe()
        try:
            try:
                process = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "dicomnode.receive.receivers",
                        "--fd",
                        str(fd),
                        "--index",
                        str(index),
                        "--slots-fd",
                        str(slots_fd),
                        "--processes",
                        str(self.processes),
                        "--ready-fd",
                        str(ready_write),
                        "--parent",
                        str(os.getpid()),
                    ],
                    stdin=subprocess.PIPE,
                    pass_fds=(fd, slots_fd, ready_write),
                )
            finally:
                os.close(ready_write)  # the child holds its own copy
            assert process.stdin is not None
            try:
                process.stdin.write(self.config.model_dump_json().encode("utf-8"))
                process.stdin.close()
            except OSError:  # it died at once; it will not report ready either
                pass
            readable, _, _ = select.select([ready_read], [], [], READY_TIMEOUT_SECONDS)
            ready = bool(readable) and os.read(ready_read, 1) == b"R"
        finally:
            os.close(ready_read)
        if not ready:
            process.kill()
            code = process.wait()
            raise ReceiverError(f"receiver process {index} did not start (exit code {code})")
        return _Child(index, process, time.monotonic())

    def _supervise(self) -> None:
        """Restart a receiver that died (the others keep receiving meanwhile)."""
        while not self._stopping.wait(SUPERVISE_SECONDS):
            for position, child in enumerate(list(self._children)):
                code = child.process.poll()
                if code is None or self._stopping.is_set():
                    continue
                log.error(
                    "receiver process exited; restarting it",
                    extra={"receiver": child.index, "exit_code": code},
                )
                if time.monotonic() - child.started < RESTART_BACKOFF_SECONDS:
                    self._stopping.wait(RESTART_BACKOFF_SECONDS)
                if self._stopping.is_set():
                    return
                assert self._slots is not None
                self._slots.clear(child.index)  # its connections died with it
                try:
                    replacement = self._spawn(child.index)
                except ReceiverError as exc:
                    log.error("%s", exc, extra={"receiver": child.index})
                    child.started = time.monotonic()
                    continue
                with self._lock:
                    self._children[position] = replacement

    def alive(self) -> dict[str, bool]:
        with self._lock:
            return {f"receiver-{c.index}": c.process.poll() is None for c in self._children}

    def stop(self) -> None:
        """SIGTERM to every receiver (each finishes the instance it is storing), then wait."""
        self._stopping.set()
        with self._lock:
            children = list(self._children)
        for child in children:
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        for child in children:
            try:
                child.process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.warning(
                    "receiver process did not stop in time; killed", extra={"receiver": child.index}
                )
                child.process.kill()
                child.process.wait()
        if self._supervisor is not None:
            self._supervisor.join(timeout=SUPERVISE_SECONDS * 2)
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        if self._slots is not None:
            self._slots.close()
            self._slots = None


# --- the child ---------------------------------------------------------------------------------
class _ReceiverField(logging.Filter):
    def __init__(self, index: int):
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.receiver = self.index
        return True


def _die_with_parent(parent: int) -> None:
    """A receiver must never outlive its node (it would hold the port after a SIGKILL)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dicomnode.receive.receivers")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--slots-fd", type=int, required=True)
    parser.add_argument("--processes", type=int, required=True)
    parser.add_argument("--ready-fd", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    args = parser.parse_args(argv)
    _die_with_parent(args.parent)

    from db.session import Database
    from dicomnode import logs
    from dicomnode.net.scp import StoreSCP
    from dicomnode.receive.assembly import SeriesAssembler
    from dicomnode.receive.intake import Intake
    from dicomnode.receive.spool import SpoolLayout
    from dicomnode.receive.store_handler import (
        IntakeHandler,
        listener_settings,
        max_dataset_bytes,
    )

    config = Config.model_validate_json(sys.stdin.buffer.read())
    node = config.node
    logs.configure(node.log_level, node.log_format)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_ReceiverField(args.index))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    database = Database(node.resolved_database_url())
    layout = SpoolLayout(node.spool_dir, node.quarantine_dir)
    intake = Intake(
        database,
        layout,
        int(node.min_free_mb * 2**20),
        max_dataset_bytes=max_dataset_bytes(config),
    )
    assembler = SeriesAssembler(database, config.rules, config.completion.quiet_seconds)
    slots = Slots(
        args.slots_fd,
        args.processes,
        args.index,
        node.max_pending_connections,
        node.max_associations,
    )
    scp = StoreSCP(listener_settings(config), IntakeHandler(config, intake, assembler), slots)
    scp.start(socket.socket(fileno=args.fd))
    os.write(args.ready_fd, b"R")
    os.close(args.ready_fd)
    stop.wait()
    scp.stop()
    database.dispose()


if __name__ == "__main__":
    main()
