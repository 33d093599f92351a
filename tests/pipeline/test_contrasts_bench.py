"""The every-profile quality bench (bench/bench_contrasts.py) on its smallest case: one T2-64mT
series of a real brain at 3 mm pixels, simulated as ``dicomnode simulate`` writes it, through
``pipeline.run.enhance_series`` with cubic B-spline only, read back and scored. Checks the
plumbing (geometry, routing, one row per method and region, cubic as its own reference), not
image quality; the bench itself is never part of the test run."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.bench_contrasts import (
    Case,
    Options,
    case_geometry,
    report,
    run_case,
    summary,
    table,
)
from models.brains import load_brain
from models.profile import load_profile
from pipeline.lowfield import SourceHead, source_from_brain


@pytest.mark.parametrize(
    ("profile", "choice", "factor", "spacing", "thickness"),
    [
        ("T2-64mT", "k4", 4, 6.0, 6.0),  # contiguous 64 mT slices: thickness = spacing
        ("T2-64mT", "k8", 8, 12.0, 12.0),
        ("T2-64mT", "native", 4, 5.0, 5.0),  # 5 mm over 1.5 mm pixels: k = 4
        ("FLAIR-0.36T", "k4", 4, 3.6, 3.0),  # the profile's 5/6 thickness ratio kept
        ("FLAIR-0.36T", "native", 8, 6.0, 5.0),  # 6 mm over 0.9 mm pixels: k = 8
    ],
)
def test_case_geometry_gives_the_factor_every_engine_picks(
    profile: str, choice: str, factor: int, spacing: float, thickness: float
) -> None:
    geometry, k = case_geometry(load_profile(profile), choice)
    assert k == factor
    assert geometry.slice_spacing_mm == pytest.approx(spacing)
    assert geometry.slice_thickness_mm == pytest.approx(thickness)
    assert geometry.pixel_mm == load_profile(profile).geometry.pixel_mm  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def source() -> SourceHead:
    return source_from_brain(load_brain("mni152-2009a"))


def test_smallest_case_with_bspline_only(source: SourceHead) -> None:
    profile = load_profile("T2-64mT")
    geometry, factor = case_geometry(profile, "k4", pixel_mm=3.0)
    case = Case("T2-64mT", "mni152-2009a", "k4", geometry, factor, "mean", 0.0)
    notes: list[str] = []
    rows = run_case(case, source, ["whole"], Options(methods=("bspline",)), notes)

    (row,) = rows
    assert notes == []  # routed to its own profile, ran at the intended factor
    assert row.routed_profile == "T2-64mT"
    assert (row.factor, row.method, row.roles, row.seen) == (
        4,
        "bspline",
        ["cubic"],
        "seen in training",
    )
    assert row.engine.startswith("bspline")
    # cubic is its own reference: every gain is exactly 0
    for name in ("psnr", "ssim", "edge_f1", "res_psnr", "contrast_error"):
        assert row.gain(name) == 0.0, name
    assert row.contrast_change_pct == 0.0
    assert math.isfinite(row.scores.psnr) and 10.0 < row.scores.psnr < 50.0
    assert 0.0 < row.scores.ssim <= 1.0
    assert 0.0 <= row.scores.edge_f1 <= 1.0
    # T2: grey matter brighter than white, so (w - g) / (w + g) is negative
    assert -1.0 < row.wm_gm_contrast < 0.0
    assert row.snr_measured[0] == pytest.approx(profile.snr_mean[0], rel=0.15)
    assert row.readback_max_abs_diff <= 1.0
    assert "T2 at 0.064 T, noise-free" in row.truth

    lines = table(rows).splitlines()
    assert len(lines) == 3  # header, separator, the one row
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells[:2] == ["T2-64mT", "mni152-2009a"]
    assert cells[3].startswith("4 (k4: 3 px, 12/12 mm)")
    assert cells[8] == "+0.00"  # PSNR gain
    assert np.isfinite(float(cells[7]))

    summary_lines, data = summary(rows)
    assert "active engine was not run" in summary_lines[0]
    assert data[0]["cases"] == 1 and data[0]["beats_cubic_psnr_ssim_edge_f1"] == 0
    assert any("## Summary" in line for line in report(rows, [], notes, done=True))
