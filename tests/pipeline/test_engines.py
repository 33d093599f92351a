"""pipeline.engines: the B-spline engine honours the grid convention; the registry works."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import map_coordinates

from models.engine import EngineInfo, EngineResult, ThroughPlaneEngine
from pipeline import engines
from pipeline.engines import (
    BSplineEngine,
    available_engines,
    choose_engine,
    get_engine,
    register_engine,
    unregister_engine,
)
from pipeline.errors import EnhanceError


def test_bspline_implements_the_contract():
    engine = get_engine("bspline")
    assert isinstance(engine, ThroughPlaneEngine)
    assert engine.info == EngineInfo(
        "bspline", BSplineEngine.VERSION, None, engine.info.description, learned=False
    )
    assert {4, 8} <= set(engine.supported_factors)


@pytest.mark.parametrize("factor", [2, 3, 4, 8])
def test_bspline_output_grid_convention(factor):
    """Thin slice i*k+j sits at i + (j-(k-1)/2)/k: a linear ramp is reproduced there exactly."""
    n = 16
    z = np.arange(n, dtype=np.float32)
    volume = np.broadcast_to(z[:, None, None] * 10.0, (n, 4, 5)).copy()
    out = BSplineEngine().upsample(volume, factor).volume
    assert out.shape == (n * factor, 4, 5) and out.dtype == np.float32
    coordinates = np.array(
        [i + (j - (factor - 1) / 2) / factor for i in range(n) for j in range(factor)]
    )
    # Away from the mirror boundary (whose effect decays by 0.27 per slice) a linear ramp is
    # reproduced exactly at the convention's positions; a shifted grid would be off by 10*shift.
    interior = (coordinates >= 5) & (coordinates <= n - 6)
    np.testing.assert_allclose(out[interior, 2, 2], coordinates[interior] * 10.0, atol=2e-2)


def test_bspline_matches_scipy_cubic_spline():
    rng = np.random.default_rng(1)
    volume = rng.random((7, 6, 5)).astype(np.float32)
    factor = 4
    out = BSplineEngine().upsample(volume, factor).volume
    z = np.array([i + (j - 1.5) / 4 for i in range(7) for j in range(4)])
    grid = np.meshgrid(z, np.arange(6), np.arange(5), indexing="ij")
    expected = map_coordinates(volume, grid, order=3, mode="mirror")
    np.testing.assert_allclose(out, expected, atol=1e-4)


def test_bspline_rejects_unsupported_factor():
    with pytest.raises(ValueError):
        BSplineEngine().upsample(np.zeros((4, 2, 2), np.float32), 9)


class _FakeModel:
    """Stands in for the trained model: another module registering an engine."""

    @property
    def info(self) -> EngineInfo:
        return EngineInfo("fake-iqt", "2.0.0", "ab" * 32)

    @property
    def supported_factors(self) -> tuple[int, ...]:
        return (4,)

    def upsample(self, volume, factor, slice_thickness_ratio=1.0):
        return EngineResult(np.repeat(volume, factor, axis=0), consistency_psnr_db=40.0)


@pytest.fixture
def fake_model():
    register_engine("fake-iqt", _FakeModel, rank=10, accepts=lambda p: p.get("Modality") == "MR")
    yield
    unregister_engine("fake-iqt")


def test_registry_lets_another_module_register_and_rank(fake_model):
    assert available_engines()[0] == "fake-iqt"
    assert "bspline" in available_engines()
    engine, why = choose_engine(None, {"Modality": "MR"})
    assert engine.info.name == "fake-iqt" and "best available" in why
    # A series the model does not accept falls back to the baseline.
    engine, _ = choose_engine(None, {"Modality": "CT"})
    assert engine.info.name == "bspline"
    assert choose_engine("bspline", {"Modality": "MR"})[0].info.name == "bspline"
    with pytest.raises(ValueError):
        register_engine("fake-iqt", _FakeModel)


def test_registry_errors_have_reasons():
    with pytest.raises(EnhanceError) as caught:
        get_engine("no-such-engine")
    assert caught.value.reason == "unknown-engine" and "bspline" in caught.value.message

    def broken():
        raise RuntimeError("weights file missing")

    register_engine("broken", broken, rank=99)
    try:
        with pytest.raises(EnhanceError) as caught:
            get_engine("broken")
        assert caught.value.reason == "engine-unavailable"
        # automatic choice skips an engine that cannot load
        assert choose_engine(None)[0].info.name == "bspline"
    finally:
        unregister_engine("broken")
    assert engines.ENTRY_POINT_GROUP == "dicomnode.engines"


def check_releases_run_by_name(directory: Path | None = None) -> None:
    """Every version released in ``directory`` (default: the package) of each model (``iqt-t1``,
    ``iqt-mc``) is an engine ``NAME@VERSION`` ranked below ``bspline`` (never chosen
    automatically), and the oldest version of each builds by name as that model's network."""
    from models.release import MC_MODEL_NAME, MODEL_NAME, released_entries, version_key

    names = available_engines()
    for model in (MODEL_NAME, MC_MODEL_NAME):
        versions = {str(e["version"]) for e in released_entries(directory, model).values()}
        for version in versions:
            assert f"{model}@{version}" in names
            assert names.index(f"{model}@{version}") > names.index("bspline")
        if model == MODEL_NAME:
            assert versions, "no iqt-t1 release"
        if versions:
            oldest = min(versions, key=version_key)
            engine, why = choose_engine(f"{model}@{oldest}")
            assert (engine.info.name, engine.info.version) == (model, oldest)
            assert "requested" in why


def test_every_shipped_release_can_be_run_by_name_but_is_never_chosen() -> None:
    check_releases_run_by_name()
