"""The unsupervised per-case engine ``inr`` (models.inr) on small volumes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.engine import ThroughPlaneEngine
from models.inr import CLASSES, INREngine, INRSettings, accepts_profile, contrast_step, segment
from models.profile import load_profile
from models.simulate import simulate_low_field
from tests.models.conftest import phantom

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def acquired() -> np.ndarray:
    brain = phantom((32, 32, 32))
    sim = simulate_low_field(
        brain.t1,
        brain.tissue,
        4,
        load_profile("T2-64mT"),
        np.random.default_rng(0),
        snr=(30.0, 40.0),
    )
    return (sim.low_field / np.percentile(sim.low_field, 99)).astype(np.float32)


@pytest.mark.parametrize("residual", [False, True])
def test_fitting_reduces_the_data_consistency_loss(acquired, residual) -> None:
    settings = INRSettings(iterations=60, batch=512, tv_points=256, residual=residual)
    seen: list[tuple[int, float]] = []
    engine = INREngine(settings, progress=lambda i, n, dc: seen.append((i, dc)))
    result = engine.upsample(acquired, 4)
    report = engine.last_report
    assert result.volume.shape == (32, 32, 32)
    assert np.isfinite(result.volume).all()
    assert report is not None and report.iterations == 60
    # from zero (coordinates alone) the loss must fall a lot; from cubic it must still fall
    assert report.dc_l1_end < report.dc_l1_start * (0.5 if not residual else 0.95)
    assert seen and seen[-1][0] == 60  # progress reported
    assert result.consistency_psnr_db is not None
    assert result.notes["dc_l1_end"] == report.dc_l1_end


def test_time_budget_stops_the_fit(acquired) -> None:
    engine = INREngine(INRSettings(iterations=10_000, time_budget_s=1.0, batch=256))
    engine.upsample(acquired, 4)
    assert 0 < engine.last_report.iterations < 10_000
    assert engine.last_report.seconds < 5.0


def test_engine_contract_and_provenance() -> None:
    engine = INREngine()
    assert isinstance(engine, ThroughPlaneEngine)
    assert engine.info.unsupervised and engine.info.learned
    assert engine.info.weights_sha256 is None
    assert "per case" in engine.info.description
    assert accepts_profile({"Modality": "MR", "MagneticFieldStrength": "0.064"})
    assert accepts_profile({"Modality": "MR"})
    assert not accepts_profile({"Modality": "MR", "MagneticFieldStrength": "3"})
    assert not accepts_profile({"Modality": "CT"})
    with pytest.raises(ValueError):
        engine.upsample(np.zeros((4, 8, 8), np.float32), 9)


def test_segmentation_orders_classes_by_intensity(acquired) -> None:
    labels = segment(acquired)
    assert labels.shape == (len(CLASSES),) + acquired.shape
    np.testing.assert_allclose(labels.sum(axis=0), 1.0, atol=1e-4)
    hard = labels.argmax(axis=0)
    means = [float(acquired[hard == c].mean()) for c in range(1, 4)]
    assert means == sorted(means)


def test_contrast_step_sets_the_asked_ratio_and_keeps_structure() -> None:
    rng = np.random.default_rng(1)
    shape = (4, 16, 16)
    p = np.zeros((4,) + shape, np.float32)
    p[3, :, :, :8] = 1.0  # bright
    p[2, :, :, 8:] = 1.0  # mid
    image = np.where(p[3] > 0, 1.0, 0.8).astype(np.float32) + rng.normal(0, 0.01, shape)
    out, vectors = contrast_step(image.astype(np.float32), p, {"mid": 0.75})
    assert float(out[:, :, 8:].mean()) / float(out[:, :, :8].mean()) == pytest.approx(0.6, rel=0.02)
    # the noise (structure) is untouched: the step only shifts each tissue's level
    np.testing.assert_allclose(
        out[:, :, :8] - out[:, :, :8].mean(), image[:, :, :8] - image[:, :, :8].mean(), atol=1e-5
    )
    assert min(vectors["fitted"]) >= 0.0
    with pytest.raises(ValueError):
        contrast_step(image, p, {"bright": 0.5})
