"""Shared fixtures: small but real series built from nilearn's MNI152 brain (pipeline.sample).

128x128 at 1.8 mm keeps the whole head in the field of view while keeping every pipeline run to
a second or two on a 2-core machine; refusal tests use 64x64 since they never decode much.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset

from pipeline.sample import AXIAL, SAGITTAL, Acquisition, build_series, load_brain
from pipeline.settings import PipelineSettings

_TILT = math.radians(20)
OBLIQUE = (1.0, 0.0, 0.0, 0.0, math.cos(_TILT), -math.sin(_TILT))
"""Axial tilted 20 degrees about the left-right axis, like an AC-PC aligned acquisition."""

ORIENTATIONS = {"axial": AXIAL, "sagittal": SAGITTAL, "oblique": OBLIQUE}


@pytest.fixture(scope="session")
def brain() -> sitk.Image:
    return load_brain()


def small_acquisition(orientation: str = "axial", **overrides: object) -> Acquisition:
    values: dict[str, object] = dict(
        orientation=ORIENTATIONS[orientation],
        rows=128,
        columns=128,
        pixel_spacing=1.8,
        slices=12,
        slice_thickness=5.0,
        slice_spacing=6.0,
        series_description=f"T1 {orientation.upper()} SE",
        patient_name="SECRET^PATIENTNAME",
        patient_id="PID-SECRET-4711",
        seed=7,
    )
    values.update(overrides)
    return Acquisition(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def series_cache(brain: sitk.Image) -> Callable[..., list[Dataset]]:
    """Build each distinct series once per session; callers get deep copies to mutate."""
    cache: dict[tuple, list[Dataset]] = {}

    def get(orientation: str = "axial", **overrides: object) -> list[Dataset]:
        key = (orientation, tuple(sorted(overrides.items())))
        if key not in cache:
            cache[key] = build_series(small_acquisition(orientation, **overrides), brain)
        return copy.deepcopy(cache[key])

    return get


@pytest.fixture(scope="session")
def fast_settings() -> PipelineSettings:
    """Defaults except N4 on, with a short schedule: the tests go through the bias stage too,
    although it is off by default (see ``N4Settings``)."""
    return PipelineSettings.model_validate({"n4": {"enabled": True, "iterations": [15, 10]}})
