"""``dicomnode worker``: run enhance jobs for the receivers of a cluster (``[cluster]``)."""

from __future__ import annotations

import os
import socket
import threading
from typing import Annotated

import typer

from dicomnode.commands.common import ConfigOption, fail, load_or_exit


def worker(
    device: Annotated[
        str,
        typer.Option(help="cpu, cuda:N, or auto (the first GPU when there is one, else cpu)."),
    ] = "auto",
    concurrency: Annotated[
        int,
        typer.Option(
            min=1,
            max=64,
            help="Jobs at once. 1 (the default; one worker per GPU) runs Celery's solo pool; "
            "more, on a CPU, a bounded thread pool with one worker process per thread.",
        ),
    ] = 1,
    threads: Annotated[
        int | None, typer.Option(min=1, help="CPU threads per job (default: cores / concurrency).")
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(help="The worker's name in `dicomnode status` (default: HOST:DEVICE)."),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Run a Celery worker that claims enhance jobs from the database with a lease.

    Needs \\[cluster] enabled = true, the shared PostgreSQL database_url and the shared
    data_dir. SIGTERM drains: no new job; the running one finishes within
    \\[cluster] drain_seconds or goes back to the queue.
    """
    from dicomnode import logs
    from dicomnode.cluster.worker import ClusterWorker, resolve_device, run
    from dicomnode.notify import notify, start_watchdog

    settings = load_or_exit(config)
    if not settings.cluster.enabled:
        raise fail(
            "\\[cluster] enabled is false: on a single machine `dicomnode serve` runs the jobs "
            "itself; see README 'Running on several machines'",
            2,
        )
    if device.startswith("cuda") and concurrency != 1:
        raise fail("one worker per GPU: --concurrency must be 1 with a cuda device", 2)
    logs.configure(settings.node.log_level, settings.node.log_format)
    device = resolve_device(device)
    chosen = name or f"{socket.gethostname()}:{device}"
    os.environ.setdefault("TCP_NODELAY", "1")
    cluster_worker = ClusterWorker(settings, chosen, device, concurrency, threads)
    stopped = threading.Event()

    def ready() -> None:
        notify(f"READY=1\nSTATUS=worker {chosen} on {device}")
        start_watchdog(cluster_worker.healthy, stopped)

    try:
        code = run(cluster_worker, on_ready=ready)
    finally:
        stopped.set()
    raise typer.Exit(code)
