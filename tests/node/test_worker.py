"""The worker's CUDA out-of-memory ladder: smaller tiles twice, then the CPU, each step recorded.

No GPU is needed: the engine below raises torch's own ``OutOfMemoryError`` the way a CUDA engine
does, which is the only way to exercise the ladder on a machine without one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

from dicomnode.process.worker import EngineCache, ModelSpec, _with_oom_fallback
from models.infer import TileSettings
from pipeline.errors import EnhanceError

SPEC = ModelSpec(1, "iqt-t1", "0.1.0", 4, "/nonexistent", "0" * 64)


@dataclass
class TightEngine:
    """Runs out of memory until its tiles are at most ``fits`` voxels (never, on CUDA, if 0)."""

    device: str
    fits: int
    tiles: dict[int, TileSettings] = field(default_factory=lambda: {4: TileSettings()})


class FakeCache(EngineCache):
    def __init__(self, engines: dict[str, TightEngine]):
        super().__init__("cuda:0", None)
        self.engines = engines

    def get(self, spec: ModelSpec, device: str | None = None) -> TightEngine:
        return self.engines[device or self.device]


def run(engine: TightEngine) -> str:
    tiles = engine.tiles[4]
    if engine.device.startswith("cuda") and tiles.max_tile_voxels > engine.fits:
        # the pipeline wraps engine errors in EnhanceError: the ladder must look through it
        try:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        except torch.cuda.OutOfMemoryError as exc:
            raise EnhanceError("engine-failed", f"engine failed: {exc}") from exc
    return f"ran on {engine.device} with {tiles.max_tile_voxels}"


def test_smaller_tiles_are_tried_before_the_cpu():
    cache = FakeCache({"cuda:0": TightEngine("cuda:0", fits=1_000_000)})
    fallbacks: list[str] = []
    ran = _with_oom_fallback(run, SPEC, cache, fallbacks)
    assert ran.value == "ran on cuda:0 with 1000000"
    assert len(fallbacks) == 2 and all("CUDA out of memory on cuda:0" in f for f in fallbacks)


def test_cpu_takes_over_when_the_smallest_tiles_do_not_fit():
    cache = FakeCache({"cuda:0": TightEngine("cuda:0", fits=0), "cpu": TightEngine("cpu", fits=0)})
    fallbacks: list[str] = []
    ran = _with_oom_fallback(run, SPEC, cache, fallbacks)
    assert ran.value.startswith("ran on cpu")
    assert "running on the CPU" in fallbacks[-1] and len(fallbacks) == 3


def test_other_errors_are_not_retried():
    def broken(engine: object) -> str:
        raise EnhanceError("engine-failed", "shape mismatch")

    cache = FakeCache({"cuda:0": TightEngine("cuda:0", fits=0)})
    fallbacks: list[str] = []
    with pytest.raises(EnhanceError):
        _with_oom_fallback(broken, SPEC, cache, fallbacks)
    assert fallbacks == []


def _released_spec(version: str = "0.2.0", factor: int = 4, sha256: str | None = None) -> ModelSpec:
    """A registry-like spec for a weights file shipped with the software, with its manifest
    settings (tile, correction) as ``registry.sync_released`` records them."""
    from models.release import file_name, read_manifest, weights_dir

    name = file_name(factor, version)
    entry = read_manifest()["models"][name]
    return ModelSpec(
        7,
        "iqt-t1",
        version,
        factor,
        str(weights_dir() / name),
        sha256 or entry["sha256"],
        tile=entry.get("tile"),
        consistency_correction=bool(entry.get("consistency_correction", False)),
    )


def test_the_worker_builds_its_engine_through_the_pipeline_engine_registry(monkeypatch):
    """One way to build an engine: the worker asks ``pipeline.engines`` (as ``dicomnode enhance``
    does) and gets the engine it used to build by hand, with the version's tile and hash."""
    import pipeline.engines
    from models.iqt_engine import IQTEngine

    asked: list[str] = []
    load_engine = pipeline.engines.load_engine

    def recording(engine, weights, /, **options):  # type: ignore[no-untyped-def]
        asked.append(engine)
        return load_engine(engine, weights, **options)

    monkeypatch.setattr(pipeline.engines, "load_engine", recording)
    spec = _released_spec()
    cache = EngineCache("cpu", 1)
    engine = cache.get(spec)
    assert asked == ["iqt-t1"]
    assert isinstance(engine, IQTEngine)
    assert (engine.info.name, engine.info.version) == ("iqt-t1", "0.2.0")
    assert engine.info.weights_sha256 == spec.sha256  # one file: its own hash
    assert engine.supported_factors == (4,)
    expected_tile = TileSettings(**spec.tile) if spec.tile else TileSettings()
    assert engine.tiles == {4: expected_tile}
    assert engine.consistency_correction == spec.consistency_correction
    assert (engine.device, engine.threads) == ("cpu", 1)
    assert cache.get(spec) is engine  # kept loaded, job after job
    assert asked == ["iqt-t1"]


def test_a_weights_file_whose_hash_changed_is_not_loaded():
    from models.release import WeightsIntegrityError

    with pytest.raises(WeightsIntegrityError, match="sha256"):
        EngineCache("cpu", 1).get(_released_spec(sha256="0" * 64))


def test_derived_files_name_us_in_their_meta(tmp_path):
    """The derived series' files say whose bytes they are (our implementation UID and version),
    not pydicom's, which builds them in pipeline.derive."""
    import pydicom

    from dicomnode.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
    from dicomnode.process.worker import write_outputs
    from pipeline.sample import Acquisition, build_series

    datasets = build_series(Acquisition(rows=16, columns=16, pixel_spacing=3.0, slices=2, seed=1))
    written = write_outputs(datasets, tmp_path / "job-1")
    for output in written:
        meta = pydicom.dcmread(output.path, stop_before_pixels=True).file_meta
        assert meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
        assert meta.ImplementationVersionName == IMPLEMENTATION_VERSION_NAME
