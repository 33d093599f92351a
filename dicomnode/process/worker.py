"""The job runner's worker process: it keeps its models loaded and enhances one series per request.

Each worker is a separate process (``multiprocessing`` spawn) so that the node can enforce a
per-job timeout by killing it, and so that a crash in native code (CUDA, ITK) or the kernel's
OOM killer takes down one job, never the node. The parent (``dicomnode.process.runner``) sends a
``WorkRequest`` through a pipe and receives a ``WorkResult``; nothing here touches the database.

On a CUDA out-of-memory error the worker retries the same job with tiles of half the voxels
(twice), then on the CPU, and reports each step in ``WorkResult.fallbacks`` so the job records
what happened.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

log = logging.getLogger("dicomnode.process.worker")

NO_MODEL = "no-model"
"""``WorkResult.reason`` when no active model fits the series: the rule's ``when_no_model``."""

NO_MODEL_REASONS = frozenset({"no-factor", "unsupported-factor", "already-thin"})
"""Pipeline refusals that mean "no model fits this geometry" rather than "bad input"."""

OOM_TILE_RETRIES = 2

REGISTRY_ENGINE = "iqt-t1"
CLASSICAL_ENGINE = "bspline"
"""The engine every model registry version runs as unless its name is an engine of its own that
runs weights files (``iqt-mc``, ``registry_engine``): ``registry.import_model`` accepts only
files that load as the ANISO U-Net, and each version reports its own name and version."""


def registry_engine(name: str) -> str:
    """The engine kind that runs a registry row named ``name``: ``iqt-mc`` rows run as
    ``iqt-mc`` (contrast-agnostic files), every other row (``iqt-t1``, a site's own name) as
    ``REGISTRY_ENGINE``."""
    from pipeline.engines import runs_weights

    return name if runs_weights(name) else REGISTRY_ENGINE


@dataclass(frozen=True)
class ModelSpec:
    """One registered weights file, as the runner resolved it when it claimed the job; or a
    weightless engine configured for the profile (``[profiles.NAME]``: no id, no path)."""

    id: int | None
    name: str
    version: str
    factor: int
    path: str
    sha256: str
    tile: dict | None = None
    consistency_correction: bool = False
    options: dict | None = None
    """Options of a weightless engine (``pipeline.engines.build_engine``)."""


@dataclass(frozen=True)
class WorkRequest:
    job_id: int
    series_uid: str
    files: list[str]
    models: dict[int, ModelSpec]
    pipeline: dict
    output_dir: str


@dataclass(frozen=True)
class JobProgress:
    """A progress line from the worker process while a job runs (before its ``WorkResult``)."""

    job_id: int
    text: str


PROGRESS_INTERVAL_SECONDS = 5.0
"""At most one progress line per this many seconds reaches the runner (and the database)."""


@dataclass
class OutputFile:
    path: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


@dataclass
class WorkResult:
    job_id: int
    ok: bool
    reason: str | None = None
    message: str | None = None
    model: ModelSpec | None = None
    factor: int | None = None
    consistency_psnr_db: float | None = None
    needs_review: bool = False
    series_instance_uid: str | None = None
    outputs: list[OutputFile] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)
    fallbacks: list[str] = field(default_factory=list)
    device: str | None = None
    seconds: float = 0.0


class EngineCache:
    """Networks loaded once per process and reused job after job, keyed by what the engine is
    (name, version, factor, file hash, settings) and the device, not by the registry row: a
    contrast-agnostic file registered for five profiles is five rows and one network."""

    def __init__(self, device: str, threads: int | None):
        self.device = device
        self.threads = threads
        self._engines: dict[tuple[object, ...], object] = {}

    def get(self, spec: ModelSpec, device: str | None = None) -> Any:
        from pipeline.engines import (
            WeightsFile,
            build_engine,
            engine_takes,
            get_engine,
            load_engine,
        )

        if spec.name == CLASSICAL_ENGINE and not spec.path:
            # a registry row for classical interpolation (no weights): bench/bench_cluster.py
            # measures the orchestration with it, so that compute does not hide it
            return get_engine(CLASSICAL_ENGINE)
        device = device or self.device
        if not spec.path:
            # a weightless engine configured for the profile (inr): built once per options and
            # device, on this slot's device and threads unless the options say otherwise
            options = dict(spec.options or {})
            if engine_takes(spec.name, "device"):
                options.setdefault("device", device)
            if engine_takes(spec.name, "threads"):
                options.setdefault("threads", self.threads)
            key_options = json.dumps(options, sort_keys=True, default=str)
            key = (spec.name, key_options, device)
            if key not in self._engines:
                self._engines[key] = build_engine(spec.name, **options)
            return self._engines[key]
        key = (
            spec.name,
            spec.version,
            spec.factor,
            spec.sha256,
            json.dumps(spec.tile, sort_keys=True),
            spec.consistency_correction,
            device,
        )
        if key not in self._engines:
            started = time.perf_counter()
            # built by the pipeline's engine registry, which checks the file's sha256; the tile
            # and correction are those the version was evaluated with (its registry settings)
            self._engines[key] = load_engine(
                registry_engine(spec.name),
                {spec.factor: WeightsFile(Path(spec.path), spec.sha256, spec.tile)},
                name=spec.name,
                version=spec.version,
                consistency_correction=spec.consistency_correction,
                device=device,
                threads=self.threads,
            )
            log.info(
                "model loaded",
                extra={
                    "model": f"{spec.name}@{spec.version}/k{spec.factor}",
                    "device": device,
                    "seconds": round(time.perf_counter() - started, 2),
                },
            )
        return self._engines[key]

    def warm(self, specs: list[ModelSpec]) -> None:
        for spec in specs:
            self.get(spec)


def process(
    request: WorkRequest, cache: EngineCache, report: Callable[[str], None] | None = None
) -> WorkResult:
    """Enhance one series and write the derived instances durably under ``output_dir``;
    ``report`` receives progress lines of engines that report progress (``inr``)."""
    import pydicom

    from pipeline.enhance import choose_factor
    from pipeline.errors import PipelineError
    from pipeline.run import enhance_series
    from pipeline.settings import PipelineSettings
    from pipeline.volume import read_volume

    started = time.perf_counter()
    result = WorkResult(request.job_id, ok=False, device=cache.device)
    try:
        missing = [f for f in request.files if not Path(f).is_file()]
        if missing:
            result.reason, result.message = (
                "spool-missing",
                f"{len(missing)} spooled instance(s) are no longer on disk (purged?)",
            )
            return result
        datasets = [pydicom.dcmread(f) for f in request.files]
        settings = PipelineSettings.model_validate(request.pipeline)
        volume = read_volume(datasets, settings.volume)
        if not request.models:
            result.reason, result.message = NO_MODEL, "no active model for this profile"
            return result
        pixel_spacing = min(volume.image.GetSpacing()[:2])
        try:
            factor = choose_factor(
                volume.slice_spacing, pixel_spacing, tuple(sorted(request.models)), settings.enhance
            )
        except PipelineError as exc:
            if exc.reason in NO_MODEL_REASONS:
                result.reason, result.message = NO_MODEL, f"[{exc.reason}] {exc.message}"
                return result
            raise
        spec = request.models[factor]
        enhance = settings.enhance.model_copy(update={"factor": factor})
        settings = settings.model_copy(update={"enhance": enhance})
        enhanced = _with_oom_fallback(
            lambda engine: _with_progress(
                engine, report, lambda: enhance_series(datasets, settings, engine, volume=volume)
            ),
            spec,
            cache,
            result.fallbacks,
        )
        result.device = str(getattr(enhanced.engine_object, "device", None) or cache.device)
        enhancement = enhanced.value
        outputs = write_outputs(enhancement.datasets, Path(request.output_dir))
        result.ok = True
        result.model = spec
        result.factor = enhancement.factor
        result.consistency_psnr_db = enhancement.consistency_psnr_db
        result.needs_review = enhancement.needs_review
        result.series_instance_uid = enhancement.series_instance_uid
        result.outputs = outputs
        result.metadata = enhancement.metadata()
    except PipelineError as exc:
        # the runner stores "[reason] message": the message must not carry the prefix again
        result.reason, result.message = exc.reason, exc.detail
    except Exception as exc:  # noqa: BLE001 - reported to the parent as the job's failure
        result.reason = "internal-error"
        result.message = f"{type(exc).__name__} at {_where(exc)}; see the node's log"
        log.error(
            "job %s failed with %s:\n%s",
            request.job_id,
            type(exc).__name__,
            traceback_without_messages(exc),
            extra={"job_id": request.job_id, "series_uid": request.series_uid},
        )
    finally:
        result.seconds = time.perf_counter() - started
    return result


def _with_progress(
    engine: Any, report: Callable[[str], None] | None, run: Callable[[], Any]
) -> Any:
    """Run ``run`` with the engine's ``progress`` callback (if it has one) sending rate-limited
    lines to ``report``; the engine, cached for the next job, is left without the callback."""
    if report is None or not hasattr(engine, "progress"):
        return run()
    last = [0.0]

    def progress(done: int, total: int, loss: float) -> None:
        now = time.monotonic()
        if done < total and now - last[0] < PROGRESS_INTERVAL_SECONDS:
            return
        last[0] = now
        report(f"fit {done}/{total} iterations, data consistency L1 {loss:.4g}")

    engine.progress = progress
    try:
        return run()
    finally:
        engine.progress = None


CODE_ERRORS = (AttributeError, NameError, ImportError)
"""Errors whose messages name code (an attribute, a module), never data: kept in the log."""


def traceback_without_messages(exc: BaseException) -> str:
    """Where an unexpected error came from: every frame and exception type, no data messages.

    Library errors quote the value they refused (pydicom: "Unable to convert '31.12.1931' to
    'DA' object"), and such a value may be patient data; the frames and types say what failed
    and where, which is what fixing it needs, and they go to the log and the job's record.
    Only ``CODE_ERRORS`` keep their message ("... has no attribute 'mask'").
    """
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    lines: list[str] = []
    for item in reversed(chain):
        lines.append("Traceback (most recent call last):\n")
        lines.extend(traceback.format_tb(item.__traceback__))
        kind = f"{type(item).__module__}.{type(item).__qualname__}"
        lines.append(f"{kind}: {item}\n" if isinstance(item, CODE_ERRORS) else f"{kind}\n")
    return "".join(lines)


def _where(exc: BaseException) -> str:
    """The innermost frame of our own code as ``package/file:line (function)``, for the job.

    A library's frame (pydantic's ``main.py``) says little to an operator; the last frame in
    ``pipeline``, ``models``, ``dicomnode`` or ``db`` says which step failed.
    """
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "an unknown place"
    ours = [f for f in frames if "site-packages" not in f.filename] or frames
    last = ours[-1]
    path = Path(last.filename)
    return f"{path.parent.name}/{path.name}:{last.lineno} ({last.name})"


@dataclass
class _Ran:
    value: object
    engine_object: object


def _with_oom_fallback(
    run: Callable[[object], object], spec: ModelSpec, cache: EngineCache, fallbacks: list[str]
) -> _Ran:
    """Run with the cached engine; on CUDA out-of-memory halve the tiles, then go to the CPU."""
    engine: Any = cache.get(spec)  # an IQTEngine: its device and per-factor tiles are adjusted
    attempt = 0
    while True:
        try:
            return _Ran(run(engine), engine)
        except Exception as exc:
            if not _is_cuda_oom(exc):
                raise
            _release_cuda_memory()
            tiles = engine.tiles[spec.factor]
            if attempt < OOM_TILE_RETRIES and str(engine.device).startswith("cuda"):
                attempt += 1
                smaller = dataclasses.replace(
                    tiles,
                    rows=max(32, tiles.rows // 2),
                    cols=max(32, tiles.cols // 2),
                    max_tile_voxels=max(32**3, (tiles.max_tile_voxels or 4_000_000) // 2),
                )
                engine.tiles[spec.factor] = smaller
                fallbacks.append(
                    f"CUDA out of memory on {engine.device}; retry {attempt} with tiles "
                    f"{smaller.rows}x{smaller.cols}, at most {smaller.max_tile_voxels} voxels"
                )
                continue
            if str(engine.device).startswith("cuda"):
                fallbacks.append(
                    f"CUDA out of memory on {engine.device} with the smallest tiles; "
                    "running on the CPU"
                )
                engine = cache.get(spec, device="cpu")
                continue
            raise


def _is_cuda_oom(exc: BaseException) -> bool:
    """The pipeline wraps engine errors; look through the chain for torch's OOM error."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, torch.cuda.OutOfMemoryError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _release_cuda_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def write_outputs(datasets: list, folder: Path) -> list[OutputFile]:
    """Each derived instance durably (temp, fsync, rename), named by its SOP Instance UID.

    Derived UIDs are deterministic, so a job run again after a crash rewrites the same files.
    """
    from io import BytesIO

    from dicomnode import durable
    from dicomnode.identity import stamp

    tmp = folder / ".tmp"
    durable.make_dirs(tmp)  # the job's folder too, its name synced in outputs/
    outputs = []
    for ds in datasets:
        buffer = BytesIO()
        stamp(ds)
        ds.save_as(buffer, enforce_file_format=True)
        target = folder / f"{ds.SOPInstanceUID}.dcm"
        durable.write(target, buffer.getbuffer(), tmp_dir=tmp)
        outputs.append(
            OutputFile(
                str(target),
                str(ds.SOPClassUID),
                str(ds.SOPInstanceUID),
                str(ds.file_meta.TransferSyntaxUID),
            )
        )
    return outputs


def _progress_sender(connection: Connection, job_id: int) -> Callable[[str], None]:
    return lambda text: connection.send(JobProgress(job_id, text))


PARENT_POLL_S = 1.0


def _exit_with_parent(parent: int) -> None:
    """End this process when its parent is gone, even in the middle of a model run.

    Why: systemd kills the whole control group, but an operator's ``kill -9`` of only the
    node's main process (or an OOM kill of it) would leave this process computing a job nobody
    will collect, holding its GPU memory, until the job finished. The pipe's EOF is noticed
    only between jobs, so a daemon thread watches for re-parenting instead (the kernel's
    parent-death signal is tied to the thread that started the process, which is a runner
    thread, not the node).
    """
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(0)  # no cleanup: the parent that would collect the result is gone

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def worker_main(
    connection: Connection, device: str, threads: int | None, log_level: str, log_format: str
) -> None:
    """The worker process: answer requests until the pipe closes or ``None`` arrives."""
    from dicomnode.logs import configure

    configure(log_level, log_format)
    _exit_with_parent(os.getppid())
    if threads:
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    cache = EngineCache(device, threads)
    while True:
        try:
            message = connection.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        if isinstance(message, list):  # model specs to load ahead of the first job
            try:
                cache.warm(message)
            except Exception as exc:  # noqa: BLE001 - a bad file fails its job later, clearly
                log.warning("could not preload a model: %s", exc)
            continue
        connection.send(process(message, cache, _progress_sender(connection, message.job_id)))
