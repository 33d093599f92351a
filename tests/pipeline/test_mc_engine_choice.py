"""Automatic engine choice with the contrast-agnostic ``iqt-mc``: in an installation without its
weights a T2 series falls back exactly as before; once weights for T2-0.36T ship, it is chosen
for that profile over cubic, never for another."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

import models.release
import pipeline.engines
from pipeline.engines import available_engines, choose_engine, get_engine
from pipeline.errors import EnhanceError
from tests.models.mc_release import tiny_mc_release

T2_SERIES = {
    "Modality": "MR",
    "SeriesDescription": "T2 TSE AX",
    "MagneticFieldStrength": 0.36,
    "profile": "T2-0.36T",
}


@pytest.fixture
def forget_iqt_mc() -> Iterator[None]:
    """``get_engine`` keeps what it built: no test may leave another's iqt-mc behind."""
    pipeline.engines._instances.pop("iqt-mc", None)
    yield
    pipeline.engines._instances.pop("iqt-mc", None)


def test_with_no_iqt_mc_shipped_a_t2_series_falls_back_as_before(  # type: ignore[no-untyped-def]
    monkeypatch, tmp_path: Path, forget_iqt_mc
) -> None:
    # the package's iqt-t1 releases alone, as before any iqt-mc shipped (once one does, this
    # test still describes an installation without one)
    t1_only = {"models": models.release.released_entries()}
    (tmp_path / "manifest.json").write_text(json.dumps(t1_only))
    monkeypatch.setattr(models.release, "weights_dir", lambda: tmp_path)
    engine, why = choose_engine(None, T2_SERIES)
    assert engine.info.name == "bspline" and "best available" in why
    assert "iqt-mc" in available_engines()  # registered: the worker runs registry rows with it
    with pytest.raises(EnhanceError) as caught:
        get_engine("iqt-mc")
    assert caught.value.reason == "engine-unavailable" and "no released iqt-mc" in str(caught.value)


def test_shipped_iqt_mc_is_chosen_for_its_profiles_only(  # type: ignore[no-untyped-def]
    monkeypatch, tmp_path: Path, forget_iqt_mc
) -> None:
    release = tiny_mc_release(tmp_path / "weights", factors=(4,))
    monkeypatch.setattr(models.release, "weights_dir", lambda: release)
    engine, why = choose_engine(None, T2_SERIES)
    assert (engine.info.name, engine.supported_factors) == ("iqt-mc", (4,))
    assert "best available" in why
    flair = {**T2_SERIES, "profile": "FLAIR-0.36T", "SeriesDescription": "FLAIR AX"}
    assert choose_engine(None, flair)[0].info.name == "bspline"  # not a profile it serves
