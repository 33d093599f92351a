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
