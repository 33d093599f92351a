"""The unsupervised ``inr`` engine through the whole pipeline (pipeline.run.enhance_series)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.inr import INREngine, INRSettings
from pipeline.engines import available_engines, choose_engine
from pipeline.run import enhance_series
from pipeline.settings import PipelineSettings

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def result(series_cache):
    datasets = series_cache(
        "axial", rows=64, columns=64, pixel_spacing=3.6, slices=10, series_description="T2 AX FSE"
    )
    engine = INREngine(INRSettings(iterations=15, batch=512, tv_points=256))
    return datasets, enhance_series(datasets, PipelineSettings(), engine), engine


def test_inr_runs_through_enhance_series(result) -> None:
    datasets, enhanced, engine = result
    # 6 mm slices, 3.6 mm pixels: the smallest factor reaching 3.6 mm is 2
    assert enhanced.factor == 2
    assert len(enhanced.datasets) == len(datasets) * 2
    assert enhanced.engine.name == "inr"
    assert engine.last_report is not None and engine.last_report.iterations == 15
    pixels = np.stack([ds.pixel_array for ds in enhanced.datasets])
    assert pixels.max() > 0
    assert enhanced.consistency_psnr_db is not None


def test_provenance_says_unsupervised_and_per_case(result) -> None:
    _, enhanced, _ = result
    ds = enhanced.datasets[0]
    assert "unsupervised" in ds.DerivationDescription
    assert "fitted per case to this series alone" in ds.ImageComments
    assert ds.SeriesDescription.startswith("AI-enhanced")
    assert "weights sha256 none" in ds.DerivationDescription


def test_inr_is_registered_but_never_chosen_unasked() -> None:
    assert "inr" in available_engines()
    profile = {"Modality": "MR", "SeriesDescription": "T2 AX FSE", "MagneticFieldStrength": "0.064"}
    engine, why = choose_engine(None, profile)
    assert engine.info.name != "inr"
    engine, why = choose_engine("inr", profile)
    assert engine.info.name == "inr" and "requested" in why
