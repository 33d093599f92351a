"""``dicomnode demo``: the receiving path end to end on this machine, with real tools.

Starts a node with embedded defaults (SQLite, a data folder), builds a realistic 0.36 T axial T1
series from nilearn's MNI152 brain, sends it with dcmtk's storescu as the scanner would, and
shows what the node made of it: the completed series, its completion reason and the queued job.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer

from dicomnode.commands.common import console, fail


def demo(
    workdir: Annotated[
        Path | None, typer.Option(help="Folder for the node's data (default: a new temp folder).")
    ] = None,
    port: Annotated[int, typer.Option(help="DICOM port for the demo node.")] = 11113,
) -> None:
    """Run a node, send it a low-field T1 series with storescu, and report what happened."""
    from sqlalchemy import select

    from db.models import Job, Series
    from dicomnode import logs
    from dicomnode.config import parse_config
    from dicomnode.node import Node
    from pipeline.sample import Acquisition, build_series, write_series

    storescu = shutil.which("storescu")
    if storescu is None:
        raise fail("storescu (dcmtk) is needed: apt-get install dcmtk")
    workdir = workdir or Path(tempfile.mkdtemp(prefix="dicomnode-demo-"))
    logs.configure("WARNING", "text")
    config = parse_config(
        {
            "node": {
                "ae_title": "IQTNODE",
                "port": port,
                "bind_address": "127.0.0.1",
                "data_dir": str(workdir / "data"),
                "min_free_mb": 64,
            },
            "completion": {"quiet_seconds": 10},
            "destinations": [
                {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 4242}
            ],
            "rules": [
                {
                    "name": "lowfield-t1",
                    "match": {
                        "Modality": "MR",
                        "MagneticFieldStrength": "<1.0",
                        "SeriesDescription": "(?i)t1",
                    },
                    "action": "enhance",
                    "destinations": ["pacs"],
                }
            ],
        },
        "demo",
    )
    console.print(f"[bold]1.[/bold] building a 0.36 T axial T1 series from MNI152 in {workdir}")
    files = write_series(build_series(Acquisition()), workdir / "scanner")
    node = Node(config)
    node.start()
    try:
        console.print(f"[bold]2.[/bold] node IQTNODE listening on 127.0.0.1:{port}")
        started = time.perf_counter()
        result = subprocess.run(
            [storescu, "-aet", "LOWFIELD01", "-aec", "IQTNODE", "127.0.0.1", str(port)]
            + [str(f) for f in files],
            capture_output=True,
            text=True,
            env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"},
        )
        sent = time.perf_counter() - started
        if result.returncode != 0:
            raise fail(f"storescu failed: {result.stderr.strip()}")
        console.print(
            f"[bold]3.[/bold] storescu sent {len(files)} instances in {sent:.2f} s "
            f"({len(files) / sent:.0f}/s), every one acknowledged after fsync"
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with node.database.session() as session:
                series = session.scalars(select(Series)).first()
                job = session.scalars(select(Job)).first()
            if job is not None:
                break
            time.sleep(0.2)
        if series is None or job is None:
            raise fail("the series did not complete within 30 s")
        console.print(
            f"[bold]4.[/bold] series {series.series_uid}\n"
            f"   state {series.state}, {series.instances} instances, "
            f"completed by {series.completion_reason}\n"
            f"   rule {series.rule!r} -> job {job.id}: {job.action}, state {job.state}, "
            f"destinations {job.destinations}"
        )
        console.print(f"   data folder (spool, SQLite database): {workdir / 'data'}")
    finally:
        node.stop()
