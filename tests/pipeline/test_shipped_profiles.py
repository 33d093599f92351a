"""Every profile has a shipped, trained engine that the automatic choice picks and that runs:
``iqt-t1`` for T1 at 0.36 T, the contrast-agnostic ``iqt-mc`` for the five others (issue 16).

The series attributes are those the routing rules give each profile; the volume is small, so
this checks loading, choice and the engine contract, not quality (``bench/bench_contrasts.py``).
"""

from __future__ import annotations

import numpy as np
import pytest

import pipeline.engines
from models.profile import PROFILE_NAMES, load_profile
from pipeline.engines import choose_engine


@pytest.fixture(autouse=True)
def fresh_engines():  # type: ignore[no-untyped-def]
    """``get_engine`` keeps what it built; start and end without another test's engines."""
    for name in ("iqt-t1", "iqt-mc"):
        pipeline.engines._instances.pop(name, None)
    yield
    for name in ("iqt-t1", "iqt-mc"):
        pipeline.engines._instances.pop(name, None)


@pytest.mark.parametrize("name", PROFILE_NAMES)
def test_each_profile_gets_its_trained_engine_and_it_runs(name: str) -> None:
    profile = load_profile(name)
    series = {
        "Modality": "MR",
        "SeriesDescription": f"{profile.contrast} AX",
        "MagneticFieldStrength": profile.field_strength_t,
        "profile": name,
    }
    engine, why = choose_engine(None, series)
    expected = "iqt-t1" if name == "T1-0.36T" else "iqt-mc"
    assert engine.info.name == expected, why
    assert engine.info.learned and len(engine.info.weights_sha256 or "") == 64
    assert engine.supported_factors == (4, 8)
    if expected == "iqt-mc":
        assert name in engine.profiles  # type: ignore[attr-defined]
    rng = np.random.default_rng(0)
    volume = (rng.random((6, 48, 40)) * 300.0 + 200.0).astype(np.float32)
    for k in engine.supported_factors:
        result = engine.upsample(volume, k)
        assert result.volume.shape == (6 * k, 48, 40)
        assert np.isfinite(result.volume).all() and result.volume.std() > 0
