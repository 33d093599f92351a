"""``serve``, ``config check``, ``db upgrade`` and ``echo``: running and checking the node."""

from __future__ import annotations

import logging
import re
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from dicomnode.commands.common import ConfigOption, console, fail, load_or_exit
from dicomnode.config import ConfigError, load_config

log = logging.getLogger("dicomnode.serve")

config_app = typer.Typer(help="Check configuration files.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)


def serve(config: ConfigOption = None) -> None:
    """Run the node: DICOM listener, completion, routing, delivery (until SIGTERM/SIGINT)."""
    from dicomnode import logs
    from dicomnode.node import Node
    from dicomnode.notify import notify, start_watchdog

    settings = load_or_exit(config)
    logs.configure(settings.node.log_level, settings.node.log_format)
    node = Node(settings)
    stop = threading.Event()

    def _request_stop(signum: int, _frame: object) -> None:
        log.info("stop requested", extra={"signal": signal.Signals(signum).name})
        stop.set()

    signal.signal(signal.SIGTERM, _request_stop)
    signal.signal(signal.SIGINT, _request_stop)
    try:
        node.start()
    except Exception as exc:  # noqa: BLE001 - start-up problems must be readable
        log.exception("start-up failed")
        raise fail(f"start-up failed: {exc}") from None
    log.info(
        "node ready",
        extra={
            "port": node.port,
            "ae_title": settings.node.ae_title,
            "http_port": node.http_port,
        },
    )
    notify(f"READY=1\nSTATUS=listening on port {node.port}")
    start_watchdog(lambda: node.health()["healthy"], stop)
    stop.wait()
    notify("STOPPING=1")
    node.stop()
    log.info("node stopped")


@config_app.command("check")
def config_check(file: Annotated[Path, typer.Argument(help="TOML file to check.")]) -> None:
    """Validate a configuration file; print every problem with its key."""
    try:
        settings = load_config(file)
    except ConfigError as exc:
        for key, message in exc.problems:
            typer.echo(f"{key}: {message}", err=True)
        raise typer.Exit(1) from None
    console.print(
        f"{file}: OK ({len(settings.rules)} rule(s), {len(settings.destinations)} destination(s))",
        highlight=False,
    )


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None) -> None:
    """Create or migrate the database schema to the latest revision."""
    from db.migrate import upgrade
    from dicomnode.node import open_database

    settings = load_or_exit(config)
    database = open_database(settings)
    try:
        revision = upgrade(database)
    finally:
        database.dispose()
    console.print(f"database at revision {revision}", highlight=False)


_PEER = re.compile(r"^(?P<aet>[^@]{1,16})@(?P<host>[^:]+):(?P<port>\d+)$")


def echo(
    peer: Annotated[str, typer.Argument(help="AET@HOST:PORT")],
    calling_ae: Annotated[str, typer.Option("--calling-ae", help="Our AE title.")] = "IQTNODE",
    timeout: Annotated[float, typer.Option(help="Seconds to wait.")] = 10.0,
) -> None:
    """C-ECHO a DICOM peer and report the status and round-trip time."""
    import time

    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    match = _PEER.match(peer)
    if not match:
        raise fail(f"peer must look like AET@HOST:PORT, got {peer!r}")
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = timeout
    start = time.perf_counter()
    assoc = ae.associate(match["host"], int(match["port"]), ae_title=match["aet"])
    if not assoc.is_established:
        reason = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "no answer"
        raise fail(f"association with {peer} failed: {reason}")
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    elapsed = (time.perf_counter() - start) * 1000
    code = getattr(status, "Status", None)
    if code != 0:
        raise fail(f"C-ECHO to {peer} answered status {code}")
    console.print(f"C-ECHO {peer}: Success in {elapsed:.0f} ms", highlight=False)
