"""``dicomnode demo``: the whole product on this machine, scanner to PACS, with real tools.

A hospital evaluating the node wants to see, on a fresh machine and in a minute or two, what it
would see in production: a low-field series sent by a scanner ends up in the PACS next to an
enhanced, clearly labelled derived series. So the demo runs the real path, nothing simulated
but the scanner itself:

1. a local Orthanc is started as the PACS (installed with apt-get when missing and run as root;
   without it the enhanced series stays in the node's outbox, which the demo says);
2. a node starts in-process with embedded defaults (SQLite under the work folder); at start it
   registers and activates the released model, and its worker process loads it;
3. a realistic 0.36 T axial T1 series is built from nilearn's MNI152 brain (thick 5 mm slices
   every 6 mm, Rician noise) and sent with dcmtk's ``storescu`` as the scanner would;
4. the series completes (it announces its count), the job runner enhances it (k = 4), delivery
   sends it to Orthanc and the originals are forwarded beside it;
5. the demo prints where to look (the AI label included: where a radiologist reads that the
   series was computed, not acquired), the job with its model and weights hash, the timings of
   every stage, the data-consistency score, and writes a PNG comparing the low-field input (the
   files as sent) with the enhanced output (downloaded back from Orthanc: what the PACS holds).

The timing helpers (``JobTimeline``) are shared with ``bench/bench_e2e.py``.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from dicomnode.commands.common import console, err_console, fail

if TYPE_CHECKING:
    from db.session import Database
    from dicomnode.config import Config
    from dicomnode.node import Node
    from dicomnode.pacs import Orthanc


NODE_AET = "IQTNODE"
SCANNER_AET = "LOWFIELD01"
PACS_AET = "ORTHANC"
PROFILE = "T1-0.36T"
RULE = "lowfield-t1"
TARGET_SPACING_MM = 1.5
"""Output slices every 1.5 mm: 6 mm / 4, the k = 4 model. Left to the default (the pixel size,
0.9 mm) the runner would pick the k = 8 model and write twice as many slices."""
FIELD_OF_VIEW_MM = 230.4
"""256 x 0.9 mm, kept when ``--rows`` asks for a smaller matrix."""
DEMO_INR_OPTIONS = {"iterations": 150, "time_budget_s": 90.0}
"""``--profile`` other than T1-0.36T: the node runs the trained ``iqt-mc`` where its release
serves the profile (the registry activates it at start); the demo also configures the
unsupervised ``inr`` engine for the profile, the node's fallback where no trained model serves
it, fitted for at most 90 s so the demo stays a demo (the node's default is 400 iterations
within 300 s)."""


def say(text: str) -> None:
    """One line of the report; never wrapped, so addresses and paths stay clickable."""
    console.print(text, highlight=False, soft_wrap=True)


# --- configuration -------------------------------------------------------------------------------


def demo_config(
    data_dir: Path,
    port: int,
    pacs_port: int,
    *,
    action: str = "enhance",
    forward_originals: bool = True,
    quiet_seconds: float = 5.0,
    gpu: str = "auto",
    cpu_workers: int | None = None,
    profile: str = PROFILE,
) -> Config:
    """The embedded configuration: one rule for low-field T1 to one PACS on loopback; for
    another ``profile``, one rule for that profile, with the ``inr`` engine configured for it
    (used only where no trained model serves the profile)."""
    from dicomnode.config import parse_config

    rule: dict[str, Any] = {
        "name": demo_rule(profile),
        "match": {"Modality": "MR", "MagneticFieldStrength": "<1.0", "SeriesDescription": "(?i)t1"},
        "action": action,
        "destinations": ["pacs"],
    }
    engines: dict[str, Any] = {}
    enhance: dict[str, Any] = {"target_spacing_mm": TARGET_SPACING_MM}
    if profile != PROFILE:
        # the demo sends one simulated series of that profile: every MR series is it
        rule["match"] = {"Modality": "MR"}
        engines = {profile: {"engine": "inr", "options": DEMO_INR_OPTIONS}}
        enhance = {}  # the profile's own geometry decides the factor (to its pixel size)
    if action == "enhance":
        rule.update(profile=profile, forward_originals=forward_originals, when_no_model="forward")
    return parse_config(
        {
            "node": {
                "ae_title": NODE_AET,
                "port": port,
                "bind_address": "127.0.0.1",
                "data_dir": str(data_dir),
                "http_port": 0,
                "min_free_mb": 64,
                "log_format": "text",
                "log_level": "WARNING",
            },
            "completion": {"quiet_seconds": quiet_seconds, "check_interval_seconds": 0.25},
            "delivery": {
                "initial_backoff_seconds": 2,
                "max_backoff_seconds": 30,
                "poll_interval_seconds": 0.1,
                "connect_timeout_seconds": 2,
            },
            "runner": {
                "gpu": gpu,
                "cpu_workers": cpu_workers,
                "job_timeout_seconds": 900,
                "poll_interval_seconds": 0.1,
            },
            "pipeline": {"enhance": enhance},
            "destinations": [
                {"name": "pacs", "ae_title": PACS_AET, "host": "127.0.0.1", "port": pacs_port}
            ],
            "rules": [rule],
            "profiles": engines,
        },
        "demo",
    )


def demo_rule(profile: str) -> str:
    return RULE if profile == PROFILE else f"demo-{profile.lower()}"


# --- tools ----------------------------------------------------------------------------------------


def apt_install(package: str) -> bool:
    """Install a Debian package when we are root and apt-get exists; True when it worked."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return False
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    say(f"   installing [bold]{package}[/bold] with apt-get ...")
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", package]):
        result = subprocess.run(command, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            err_console.print(f"   apt-get failed: {result.stderr.strip()[-500:]}")
            return False
    return True


def find_storescu() -> str:
    found = shutil.which("storescu")
    if found is None and apt_install("dcmtk"):
        found = shutil.which("storescu")
    if found is None:
        raise fail("storescu (dcmtk) plays the scanner: install it with `apt-get install dcmtk`")
    return found


def find_or_install_orthanc() -> str | None:
    from dicomnode.pacs import ORTHANC_PACKAGE, find_orthanc

    found = find_orthanc()
    if found is None and apt_install(ORTHANC_PACKAGE):
        found = find_orthanc()
    return found


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class Sent:
    """One storescu run: when the last instance was acknowledged (it exited) and how long."""

    files: int
    seconds: float
    finished_at: dt.datetime


def send_with_storescu(
    storescu: str, port: int, files: list[Path], calling: str = SCANNER_AET, called: str = NODE_AET
) -> Sent:
    """C-STORE ``files`` over one association as a scanner would (``TCP_NODELAY=1``)."""
    started = time.perf_counter()
    result = subprocess.run(
        [storescu, "-aet", calling, "-aec", called, "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    finished_at = dt.datetime.now(dt.UTC)
    if result.returncode != 0:
        raise RuntimeError(f"storescu failed ({result.returncode}): {result.stderr.strip()}")
    return Sent(len(files), time.perf_counter() - started, finished_at)


# --- the job, read back from the database ---------------------------------------------------------


def _utc(value: dt.datetime) -> dt.datetime:
    """SQLite hands back naive datetimes; the node writes UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


@dataclass
class JobTimeline:
    """A job as the database recorded it: state, model, result and when each state was entered."""

    id: int
    action: str
    state: str
    reason: str | None
    series_uid: str
    model: str | None
    model_sha256: str | None
    factor: int | None
    consistency_psnr_db: float | None
    output_series_uid: str | None
    result: dict[str, Any]
    entered: dict[str, dt.datetime] = field(default_factory=dict)
    pending_deliveries: int = 0

    @classmethod
    def load(cls, database: Database, job_id: int) -> JobTimeline:
        from sqlalchemy import func, select

        from db.models import Delivery, DeliveryState, Job, JobEvent

        with database.session() as session:
            job = session.get(Job, job_id)
            assert job is not None, job_id
            events = session.scalars(
                select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
            )
            entered: dict[str, dt.datetime] = {}
            for event in events:
                entered[event.to_state] = _utc(event.at)  # the last entry of a state counts
            pending = session.scalar(
                select(func.count()).where(
                    Delivery.job_id == job_id, Delivery.state == DeliveryState.PENDING
                )
            )
            return cls(
                id=job.id,
                action=job.action,
                state=job.state,
                reason=job.reason,
                series_uid=job.series_uid,
                model=f"{job.model_name}@{job.model_version}" if job.model_name else None,
                model_sha256=job.model_sha256,
                factor=job.factor,
                consistency_psnr_db=job.consistency_psnr_db,
                output_series_uid=job.output_series_uid,
                result=dict(job.result or {}),
                entered=entered,
                pending_deliveries=int(pending or 0),
            )

    def between(self, start: str | dt.datetime, end: str) -> float | None:
        """Seconds from ``start`` (a state or a time) to entering ``end``; None if either lacks."""
        begin = self.entered.get(start) if isinstance(start, str) else start
        finish = self.entered.get(end)
        if begin is None or finish is None:
            return None
        return (finish - begin).total_seconds()

    @property
    def stage_seconds(self) -> dict[str, float]:
        """The pipeline's own per-stage timings (volume, bias, engine, derive, ...)."""
        metadata = self.result.get("metadata") or {}
        return {k: float(v) for k, v in (metadata.get("timings_s") or {}).items()}

    @property
    def worker_seconds(self) -> float | None:
        seconds = self.result.get("seconds")
        return float(seconds) if seconds is not None else None

    @property
    def device(self) -> str | None:
        return self.result.get("device")

    @property
    def output_paths(self) -> list[Path]:
        return [Path(o["path"]) for o in self.result.get("outputs") or []]

    def stages(self, sent_at: dt.datetime) -> list[tuple[str, float | None]]:
        """(label, seconds) from the last instance acknowledged to the job delivered."""
        completion = self.between(sent_at, "complete")
        if completion is not None:
            # A series that announces its count completes on its last instance, a few ms before
            # the sender has released the association: no wait at all.
            completion = max(0.0, completion)
        rows: list[tuple[str, float | None]] = [
            ("completion (last instance acked -> complete)", completion),
            ("queue wait (queued -> processing)", self.between("queued", "processing")),
        ]
        for stage, seconds in self.stage_seconds.items():
            rows.append((f"  pipeline: {stage}", seconds))
        worker = self.between("processing", "stored")
        pipeline = sum(self.stage_seconds.values())
        if worker is not None:
            rows.append(("  read, write outputs, hand-over", worker - pipeline))
            rows.append(("processing (processing -> stored)", worker))
        rows.append(("delivery (stored -> delivered)", self.between("stored", "delivered")))
        rows.append(("end to end (last instance acked -> delivered)", self.end_to_end(sent_at)))
        return rows

    def end_to_end(self, sent_at: dt.datetime) -> float | None:
        return self.between(sent_at, "delivered")


def jobs_of_series(database: Database, series_uid: str) -> list[tuple[str, int]]:
    """(action, id) of the series' jobs, oldest first: the rule's own job, then its ``forward``
    job for the originals (``forward_originals``)."""
    from sqlalchemy import select

    from db.models import Job

    with database.session() as session:
        rows = session.execute(
            select(Job.action, Job.id).where(Job.series_uid == series_uid).order_by(Job.id)
        ).all()
    return [(action, job_id) for action, job_id in rows]


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll ``check`` until it returns something truthy; TimeoutError names ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(interval)
    raise TimeoutError(f"{what} did not happen within {timeout:g} s")


def wait_for_job(
    database: Database,
    series_uid: str,
    states: tuple[str, ...],
    timeout: float,
    *,
    action: str | None = None,
    on_state: Callable[[str], None] | None = None,
) -> JobTimeline:
    """Wait until a job of the series is in one of ``states``, or has failed or been cancelled.

    ``action`` None means the rule's own job (the first): an ``enhance`` job stays that job even
    when no model fits and it is forwarded instead, which the caller sees in ``action``.
    """

    def check() -> JobTimeline | None:
        jobs = jobs_of_series(database, series_uid)
        ids = [i for a, i in jobs if action is None or a == action]
        if not ids:
            return None
        timeline = JobTimeline.load(database, ids[-1] if action else ids[0])
        if on_state is not None:
            on_state(timeline.state)
        if timeline.state in states or timeline.state in ("failed", "cancelled"):
            return timeline
        return None

    what = f"the {action or 'rule'}'s job of the series reaching {'/'.join(states)}"
    return wait_for(check, timeout, what)


# --- the demo -------------------------------------------------------------------------------------


@dataclass
class Folders:
    """Everything the demo writes, under one work folder that it leaves behind for inspection."""

    root: Path

    @property
    def data(self) -> Path:
        return self.root / "node"

    @property
    def pacs(self) -> Path:
        return self.root / "pacs"

    @property
    def scanner(self) -> Path:
        return self.root / "scanner"

    @property
    def from_pacs(self) -> Path:
        return self.root / "from-pacs"

    @property
    def preview(self) -> Path:
        return self.root / "demo-preview.png"


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the node and Orthanc are stopped, never orphaned."""

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _step(number: int, text: str) -> None:
    say(f"[bold]{number}.[/bold] {text}")


def _start_pacs(folders: Folders) -> Orthanc | None:
    from dicomnode.pacs import Orthanc

    binary = find_or_install_orthanc()
    if binary is None:
        say(
            "   [yellow]Orthanc is not installed[/yellow] (`apt-get install orthanc`, or run the "
            "demo as root): the enhanced series will stay in the node's outbox."
        )
        return None
    pacs = Orthanc(folders.pacs, aet=PACS_AET, binary=binary).start()
    say(f"   Orthanc {PACS_AET} on 127.0.0.1:{pacs.dicom_port}, web {pacs.explorer_url}")
    return pacs


def _active_model(node: Node, profile: str) -> str:
    from dicomnode.process import registry

    with node.database.session() as session:
        rows = registry.active_models(session, profile)
        names = ", ".join(f"{r.name}@{r.version}/k{r.factor}" for r in rows.values())
    configured = node.config.profiles.get(profile)
    if not names and configured is not None:
        return f"the {configured.engine!r} engine configured for it (no trained model)"
    return names or "none"


def _runs_before(node: Node) -> int:
    """Series this node already holds: a rerun in the same work folder sends a new series
    (another seed, so other UIDs) instead of a duplicate the node would store once and ignore."""
    from sqlalchemy import func, select

    from db.models import Series

    with node.database.session() as session:
        return int(session.scalar(select(func.count()).select_from(Series)) or 0)


def _build_series(folders: Folders, rows: int, seed: int, profile: str = PROFILE) -> list[Path]:
    from pipeline.sample import Acquisition, build_series, load_brain, write_series

    if profile != PROFILE:
        return _build_profile_series(folders, seed, profile)

    acquisition = Acquisition(
        rows=rows, columns=rows, pixel_spacing=FIELD_OF_VIEW_MM / rows, seed=seed
    )
    _step(
        3,
        f"building a 0.36 T axial T1 series from the MNI152 brain: {rows}x{rows} at "
        f"{acquisition.pixel_spacing:g} mm, {acquisition.slices} slices of "
        f"{acquisition.slice_thickness:g} mm every {acquisition.slice_spacing:g} mm",
    )
    shutil.rmtree(folders.scanner, ignore_errors=True)  # only what an earlier run wrote there
    return write_series(build_series(acquisition, load_brain()), folders.scanner)


def _build_profile_series(folders: Folders, seed: int, profile: str) -> list[Path]:
    """A simulated series of ``profile`` (``pipeline.lowfield``, as ``dicomnode simulate``
    writes it) from the MNI152 2009a brain and its tissue maps; the profile fixes the matrix."""
    from models.brains import load_brain
    from models.profile import load_profile
    from pipeline.lowfield import simulate_series, source_from_brain
    from pipeline.sample import write_series

    field = load_profile(profile)
    geometry = field.geometry
    assert geometry is not None  # every named profile has one (models/profiles/*.toml)
    _step(
        3,
        f"simulating a {profile} axial series from the MNI152 brain: {geometry.matrix}x"
        f"{geometry.matrix} at {geometry.pixel_mm:g} mm, {geometry.slice_thickness_mm:g} mm "
        f"slices every {geometry.slice_spacing_mm:g} mm, marked SIMULATED",
    )
    datasets, _, _ = simulate_series(
        source_from_brain(load_brain("mni152-2009a")), field, seed=seed
    )
    shutil.rmtree(folders.scanner, ignore_errors=True)
    return write_series(datasets, folders.scanner)


def _series_uid(files: list[Path]) -> str:
    import pydicom

    return str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)


def _wait_enhanced(node: Node, series_uid: str, with_pacs: bool, timeout: float) -> JobTimeline:
    """The enhance job delivered (with a PACS) or stored (its deliveries pending, without)."""
    wanted = ("delivered",) if with_pacs else ("stored", "delivered")
    with console.status("waiting for the series to complete") as status:
        return wait_for_job(
            node.database,
            series_uid,
            wanted,
            timeout,
            on_state=lambda state: status.update(f"job: {state}"),
        )


def _report_job(job: JobTimeline, sent: Sent, node: Node) -> None:
    score = (
        "not measured" if job.consistency_psnr_db is None else f"{job.consistency_psnr_db:.1f} dB"
    )
    say(
        f"   job {job.id}: [bold]{job.state}[/bold], model {job.model} (k = {job.factor}) "
        f"on {job.device}\n"
        f"   weights sha256 {job.model_sha256 or 'none (fitted to this series alone)'}\n"
        f"   data consistency (output re-degraded vs input, PSNR): {score}"
    )
    table = Table(title="timings", title_justify="left")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    table.add_row(f"storescu send ({sent.files} instances, one association)", f"{sent.seconds:.2f}")
    for label, seconds in job.stages(sent.finished_at):
        table.add_row(label, "-" if seconds is None else f"{seconds:.2f}")
    console.print(table)
    if job.state != "delivered":
        say(
            f"   {job.pending_deliveries} enhanced instance(s) wait in the node's outbox "
            f"({node.config.node.data_dir}); they go out once a PACS answers.",
        )


def _read_volume(files: list[Path]) -> Any:
    """The series in ``files``' folder as a float image scaled to its own bright tissue (~1).

    Each volume is shown on its own scale: the derived series may be stored with another
    rescale than the scanner's, and the preview is about structure, not raw numbers.
    """
    import numpy as np
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(files[0].parent)))
    image = sitk.Cast(reader.Execute(), sitk.sitkFloat32)
    values = sitk.GetArrayViewFromImage(image)
    scale = float(np.percentile(values[values > 0], 99.5)) if np.any(values > 0) else 1.0
    return image / max(scale, 1e-6)


def _write_png(folders: Folders, inputs: list[Path], outputs: list[Path], job: JobTimeline) -> Path:
    from pipeline.preview import write_preview

    score = (
        "" if job.consistency_psnr_db is None else f", consistency {job.consistency_psnr_db:.1f} dB"
    )
    title = f"low-field input (top) and {job.model} x{job.factor} output (bottom){score}"
    return write_preview(_read_volume(inputs), _read_volume(outputs), folders.preview, title)


def _outputs_from_pacs(
    pacs: Orthanc, folders: Folders, job: JobTimeline, source_uid: str
) -> list[Path]:
    """Print where the two series are in Orthanc and download the enhanced one, as stored."""
    stored = pacs.series()
    for label, uid in (("original", source_uid), ("enhanced", job.output_series_uid)):
        if uid in stored:
            series = stored[uid]
            say(
                f"   {label}: {series['MainDicomTags'].get('SeriesDescription', '')!s} "
                f"({len(series['Instances'])} instances) {pacs.series_url(series['ID'])}",
            )
    enhanced = stored.get(job.output_series_uid or "")
    if enhanced is None:
        raise fail("the enhanced series is not in Orthanc although the job is delivered")
    shutil.rmtree(folders.from_pacs, ignore_errors=True)
    return pacs.download(enhanced, folders.from_pacs)


def _where_the_ai_label_is(node: Node, pacs: Orthanc | None, job: JobTimeline) -> None:
    """Say where the plain-words AI label shows, with one instance to open and look at."""
    from dicomnode.process.runner import runner_pipeline_settings

    output = runner_pipeline_settings(node.config).output
    burned = " and burned into the top-left corner of every image" if output.burn_in_label else ""
    say(
        f'   AI label "{output.ai_label}": first words of the enhanced series\' '
        "SeriesDescription (the series list above), and in ImageComments, DerivationDescription "
        f"and ContributingEquipmentSequence of every instance{burned}"
    )
    enhanced = pacs.series().get(job.output_series_uid or "") if pacs is not None else None
    if pacs is not None and enhanced:
        say(f"   see one instance's tags: {pacs.instance_url(enhanced['Instances'][0])}")
    elif job.output_paths:
        say(f"   see one instance: {job.output_paths[0]}")


def _hold(pacs: Orthanc | None) -> None:
    where = f" (PACS: {pacs.explorer_url})" if pacs is not None else ""
    say(f"node and PACS keep running{where}; Ctrl-C stops them")
    while True:
        time.sleep(3600)


@dataclass
class DemoOptions:
    port: int
    rows: int
    timeout: float
    keep_running: bool
    pacs: bool
    profile: str = PROFILE


def _start_node(folders: Folders, options: DemoOptions, pacs: Orthanc | None) -> Node:
    from dicomnode.node import Node
    from dicomnode.pacs import free_port

    pacs_port = pacs.dicom_port if pacs is not None else free_port()  # nothing listens there
    node = Node(demo_config(folders.data, options.port, pacs_port, profile=options.profile))
    node.start()
    _step(
        2,
        f"node {NODE_AET} on 127.0.0.1:{options.port}, rule {demo_rule(options.profile)!r}: "
        f"enhance {options.profile} with {_active_model(node, options.profile)}; originals "
        "forwarded too",
    )
    return node


def _enhance(
    node: Node, storescu: str, folders: Folders, options: DemoOptions, pacs: bool
) -> tuple[list[Path], str, JobTimeline]:
    """Send the series as the scanner and wait for its enhanced result; report the job."""
    files = _build_series(folders, options.rows, _runs_before(node), options.profile)
    sent = send_with_storescu(storescu, options.port, files)
    _step(
        4,
        f"{SCANNER_AET} sent {sent.files} instances with storescu in {sent.seconds:.2f} s, "
        "each acknowledged after fsync",
    )
    source_uid = _series_uid(files)
    job = _wait_enhanced(node, source_uid, pacs, options.timeout)
    if job.state in ("failed", "cancelled") or job.action != "enhance":
        _report_job(job, sent, node)
        raise fail(f"the series was not enhanced: job {job.id} {job.state}: {job.reason}")
    _step(5, f"enhanced series {job.output_series_uid}")
    _report_job(job, sent, node)
    return files, source_uid, job


def _run(folders: Folders, options: DemoOptions) -> int:
    from dicomnode import logs

    storescu = find_storescu()
    if not port_is_free(options.port):
        raise fail(f"port {options.port} is in use on 127.0.0.1: choose another with --port")
    logs.configure("WARNING", "text")
    _step(1, f"work folder {folders.root}")
    pacs = _start_pacs(folders) if options.pacs else None
    if not options.pacs:
        say("   no PACS (--no-pacs): the enhanced series will stay in the node's outbox")
    if pacs is None:  # every retry would log the refused connection; the report says it once
        logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
        logging.getLogger("dicomnode.deliver.delivery").setLevel(logging.ERROR)
    node: Node | None = None
    try:
        node = _start_node(folders, options, pacs)
        files, source_uid, job = _enhance(node, storescu, folders, options, pacs is not None)
        if pacs is not None:
            wait_for_job(node.database, source_uid, ("delivered",), 60, action="forward")
            _step(6, f"in the PACS: {pacs.explorer_url}")
            outputs = _outputs_from_pacs(pacs, folders, job, source_uid)
        else:
            _step(6, "no PACS: the preview is made from the node's outputs")
            outputs = job.output_paths
        _where_the_ai_label_is(node, pacs, job)
        png = _write_png(folders, files, outputs, job)
        say(f"   preview (input top, enhanced bottom): {png}")
        say(f"   data folder (spool, outputs, SQLite database): {folders.data}")
        if options.keep_running:
            _hold(pacs)
        return 0
    finally:
        if node is not None:
            node.stop()
        if pacs is not None:
            pacs.stop()


def demo(
    workdir: Annotated[
        Path | None,
        typer.Option(help="Folder for everything the demo writes (default: a new temp folder)."),
    ] = None,
    port: Annotated[int, typer.Option(help="DICOM port of the demo node (127.0.0.1).")] = 11113,
    keep_running: Annotated[
        bool,
        typer.Option(help="Leave the node and Orthanc running after the report, until Ctrl-C."),
    ] = False,
    rows: Annotated[
        int,
        typer.Option(
            min=32, help="Matrix size of the sent series (same field of view); smaller is faster."
        ),
    ] = 256,
    pacs: Annotated[
        bool,
        typer.Option(help="Start a local Orthanc as the PACS (installed with apt-get as root)."),
    ] = True,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the enhanced series.")
    ] = 600.0,
    profile: Annotated[
        str,
        typer.Option(
            help="Contrast and field of the sent series: T1-0.36T (the trained model), or "
            "T2-0.36T, FLAIR-0.36T, T1-64mT, T2-64mT, FLAIR-64mT (a simulated series of that "
            "profile's geometry, enhanced by the trained iqt-mc where its release serves the "
            "profile, else by the unsupervised inr engine; --rows does not apply)."
        ),
    ] = PROFILE,
) -> None:
    """Scanner -> node -> PACS on this machine: a low-field T1 sent with storescu comes out
    enhanced in a local Orthanc; prints where to look, the model, timings and a preview PNG."""
    folders = Folders(workdir or Path(tempfile.mkdtemp(prefix="dicomnode-demo-")))
    folders.root.mkdir(parents=True, exist_ok=True)
    from models.profile import PROFILE_NAMES

    if profile not in PROFILE_NAMES:
        raise fail(f"--profile {profile!r} is not one of {', '.join(PROFILE_NAMES)}")
    options = DemoOptions(port, rows, timeout, keep_running, pacs, profile)
    try:
        with _sigterm_as_interrupt():
            code = _run(folders, options)
    except KeyboardInterrupt:
        say("stopped")
        code = 0 if keep_running else 130
    except TimeoutError as exc:
        raise fail(str(exc)) from None
    raise typer.Exit(code)
