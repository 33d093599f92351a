"""Routing picks the profile (contrast and field) of real-looking series built with
pipeline.sample, with the example configuration's rules and with ``dicomnode enhance``'s."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from dicomnode.config import load_config
from dicomnode.receive.profile_rules import DEFAULT_RULES, pick_profile
from dicomnode.receive.routing import attributes_for_routing, route, rule_keys
from pipeline.sample import Acquisition, build_series, write_series
from tests.node.helpers import BIN

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "dicomnode.toml"


def _series(field: float, description: str, **params: object) -> list:
    """A header-true series (zero pixels: routing reads headers only)."""
    acq = Acquisition(
        rows=32,
        columns=32,
        pixel_spacing=7.2,
        slices=8,
        field_strength=field,
        series_description=description,
        extra={k: v for k, v in params.items()},
    )
    return build_series(acq, pixels=np.zeros((8, 32, 32), np.uint16))


CASES = [
    # (field T, SeriesDescription, parameters, expected profile)
    (0.36, "T2 AX FSE", {"RepetitionTime": "4000", "EchoTime": "110"}, "T2-0.36T"),
    (
        0.36,
        "AX T2 FLAIR",
        {"RepetitionTime": "7000", "EchoTime": "110", "InversionTime": "2130"},
        "FLAIR-0.36T",
    ),
    (
        0.064,
        "T1 AXIAL",
        {"RepetitionTime": "1500", "EchoTime": "6", "InversionTime": "560"},
        "T1-64mT",
    ),
    (0.36, "T1 AX SE", {}, "T1-0.36T"),
    (0.064, "T2 AXI", {"RepetitionTime": "2200", "EchoTime": "180"}, "T2-64mT"),
    (
        0.064,
        "FLAIR AXI",
        {"RepetitionTime": "4000", "EchoTime": "180", "InversionTime": "1450"},
        "FLAIR-64mT",
    ),
    # no hint in the description: the sequence parameters decide
    (0.36, "AX 3MM", {"RepetitionTime": "4500", "EchoTime": "100"}, "T2-0.36T"),
    (
        0.064,
        "SERIES 4",
        {"RepetitionTime": "4000", "EchoTime": "180", "InversionTime": "1400"},
        "FLAIR-64mT",
    ),
    # an inversion-recovery T1 ("T1 FLAIR", short TI) is a T1, not a FLAIR
    (
        0.36,
        "T1 FLAIR AX",
        {"RepetitionTime": "2000", "EchoTime": "10", "InversionTime": "700"},
        "T1-0.36T",
    ),
]


@pytest.mark.parametrize(("field", "description", "params", "profile"), CASES)
def test_example_rules_pick_the_profile(field, description, params, profile) -> None:
    config = load_config(EXAMPLE)
    first = _series(field, description, **params)[0]
    decision = route(
        config.rules, attributes_for_routing(first, "SCANNER", rule_keys(config.rules))
    )
    assert decision.action == "enhance"
    assert decision.profile == profile
    assert pick_profile(first)[0] == profile  # dicomnode enhance's built-in rules agree


def test_high_field_and_derived_series_are_not_enhanced() -> None:
    config = load_config(EXAMPLE)
    high = _series(3.0, "T2 AX FSE", RepetitionTime="4000", EchoTime="100")[0]
    decision = route(config.rules, attributes_for_routing(high, None, rule_keys(config.rules)))
    assert decision.action == "forward"
    assert pick_profile(high) == (None, None)
    derived = _series(0.064, "T2 AXI")[0]
    derived.ImageType = ["DERIVED", "SECONDARY"]
    assert pick_profile(derived) == (None, None)


def test_built_in_rules_equal_the_example_profile_rules() -> None:
    example = [
        (r.name, r.match, r.profile) for r in load_config(EXAMPLE).rules if r.action == "enhance"
    ]
    assert example == [(r.name, r.match, r.profile) for r in DEFAULT_RULES]


def test_enhance_says_which_profile_it_picked(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    acq = Acquisition(
        rows=64,
        columns=64,
        pixel_spacing=3.6,
        slices=10,
        field_strength=0.064,
        series_description="FLAIR AXI",
        extra={"RepetitionTime": "4000", "EchoTime": "180", "InversionTime": "1450"},
    )
    rng = np.random.default_rng(0)
    write_series(
        build_series(acq, pixels=rng.integers(0, 400, (10, 64, 64), dtype=np.uint16)), folder
    )
    run = subprocess.run(
        [str(BIN), "enhance", str(folder), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "profile FLAIR-64mT: rule 'lowfield-64mT-flair'" in run.stderr
    # the T1-0.36T network declines another profile's series; the contrast-agnostic network
    # released for FLAIR-64mT takes it
    assert "iqt-mc" in run.stderr
