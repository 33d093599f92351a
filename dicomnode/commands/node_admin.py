"""``serve``, ``config check``, ``db upgrade`` and ``echo``: running and checking the node."""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from dicomnode.commands.common import ConfigOption, console, fail, load_or_exit
from dicomnode.config import (
    CONFIG_ENV,
    Config,
    ConfigError,
    config_path,
    load_config,
    validate_ae_title,
)

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


_PEER = re.compile(r"^(?P<aet>[^@]{1,16})@(?P<host>[^:]+|\[[^\]]+\]):(?P<port>\d+)$")


def _echo_config(explicit: Path | None) -> Config:
    """The configuration ``echo`` takes its AE title and destinations from: ``--config`` or
    ``$DICOMNODE_CONFIG`` when given (which must be valid), else the system-wide file when it
    exists, else the defaults (a verification tool must work before the node is set up)."""
    path = config_path(explicit)
    if explicit is None and CONFIG_ENV not in os.environ and not path.exists():
        return Config()
    return load_or_exit(explicit)


def echo(
    peer: Annotated[
        str,
        typer.Argument(help="AET@HOST:PORT, or the name of a \\[\\[destinations]] entry."),
    ],
    calling_ae: Annotated[
        str | None,
        typer.Option(
            "--calling-ae", help="Our AE title (default: \\[node] ae_title of the configuration)."
        ),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait, per step.")] = 10.0,
    config: ConfigOption = None,
) -> None:
    """C-ECHO a DICOM peer and report the status and round-trip time.

    It speaks as the node does (dicomnode.net): our implementation class UID and version name,
    the calling AE title of \\[node] ae_title, and the TLS settings of the destination it names
    (by name, or by the same AE title, host and port).
    """
    import time

    from dicomnode.net.scu import AssociationError, verify
    from dicomnode.net.tls import client_context

    settings = _echo_config(config)
    destinations = {d.name: d for d in settings.destinations}
    match = _PEER.match(peer)
    if match:
        called, host, port = match["aet"], match["host"].strip("[]"), int(match["port"])
        destination = next(
            (
                d
                for d in settings.destinations
                if (d.ae_title, d.host, d.port) == (called, host, port)
            ),
            None,
        )
    elif peer in destinations:
        destination = destinations[peer]
        called, host, port = destination.ae_title, destination.host, destination.port
    else:
        raise fail(
            f"peer must look like AET@HOST:PORT or name a destination of the configuration, "
            f"got {peer!r}"
        )
    calling = settings.node.ae_title if calling_ae is None else calling_ae
    try:
        validate_ae_title(calling)
        validate_ae_title(called)
    except ValueError as exc:
        raise fail(str(exc)) from None
    tls = destination.tls if destination is not None else None
    label = f"{called}@{host}:{port}"
    try:
        context = (
            client_context(tls.certificate, tls.private_key, tls.ca_certificates) if tls else None
        )
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise fail(f"TLS settings of destination {destination.name!r}: {exc}") from None
    start = time.perf_counter()
    try:
        response = verify(host, port, calling, called, timeout, context)
    except AssociationError as exc:
        raise fail(f"association with {label} (calling AE {calling}) failed: {exc}") from None
    elapsed = (time.perf_counter() - start) * 1000
    if response.status != 0:
        comment = f" ({response.error_comment})" if response.error_comment else ""
        raise fail(f"C-ECHO to {label} answered status 0x{response.status:04X}{comment}")
    over = " over TLS" if context is not None else ""
    console.print(
        f"C-ECHO {label}: Success in {elapsed:.0f} ms (calling AE {calling}{over})",
        highlight=False,
    )
