"""systemd's notify protocol (``Type=notify``): READY=1, STOPPING=1 and WATCHDOG=1 datagrams to
``$NOTIFY_SOCKET``. A few lines of socket code instead of a dependency; a no-op outside systemd."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable

log = logging.getLogger("dicomnode.notify")


def notify(message: str) -> bool:
    """Send one notification; returns False when not running under systemd (or on error)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
        return True
    except OSError as exc:
        log.warning("sd_notify failed: %s", exc)
        return False


def watchdog_interval() -> float | None:
    """Half of ``WatchdogSec`` when systemd asked this process for keep-alives, else None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 1e6 / 2
    except ValueError:
        return None


def start_watchdog(healthy: Callable[[], bool], stop: threading.Event) -> threading.Thread | None:
    """Send WATCHDOG=1 while ``healthy()`` holds; a stuck or dead node lets systemd restart it."""
    interval = watchdog_interval()
    if interval is None:
        return None

    def loop() -> None:
        while not stop.wait(interval):
            if healthy():
                notify("WATCHDOG=1")
            else:
                log.error("unhealthy: withholding the watchdog keep-alive")

    thread = threading.Thread(target=loop, name="watchdog", daemon=True)
    thread.start()
    return thread
