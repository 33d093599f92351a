"""Pipeline settings as one pydantic model, so the node's TOML can embed it as ``[pipeline]``.

Every knob that changes the pixels of a derived series lives here, because the derived UIDs are
computed from (source series, engine version, these settings): the same input processed with the
same settings gets the same UIDs, and a changed setting gets new ones. ``extra="forbid"``
everywhere so that a typo in the TOML is an error naming the bad key, not a silent default.
"""

from __future__ import annotations

import hashlib
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VolumeSettings(_Strict):
    """Tolerances for turning instances into one volume (``pipeline.volume``)."""

    min_slices: int = Field(8, ge=2, description="fewer slices than this are refused")
    spacing_tolerance: float = Field(
        0.1, gt=0, lt=0.5, description="allowed relative deviation of a slice step from the median"
    )
    orientation_tolerance: float = Field(
        1e-3, gt=0, description="max difference of direction cosines between instances"
    )
    max_matrix: int = Field(2048, ge=16, description="largest rows/columns accepted")
    max_slices: int = Field(1024, ge=2)
    max_voxels: int = Field(2**28, ge=1)


class N4Settings(_Strict):
    """SimpleITK N4 parameters (``pipeline.bias``).

    ``shrink_in_plane`` x ``shrink_in_plane`` x ``shrink_through_plane`` is the shrink factor for
    the fit; ``None`` through-plane means automatic: 1 for thick-slice data (slice spacing more
    than twice the pixel size; [4,4,1] was measured best here) and the in-plane factor otherwise.
    The fitted field is always evaluated and applied at full resolution.
    """

    enabled: bool = True
    backend: Literal["simpleitk", "antspy"] = "simpleitk"
    shrink_in_plane: int = Field(4, ge=1, le=16)
    shrink_through_plane: int | None = Field(None, ge=1, le=16)
    iterations: list[int] = Field(default_factory=lambda: [50, 50, 30, 20], min_length=1)
    convergence_threshold: float = Field(1e-6, gt=0)
    control_points: int = Field(4, ge=4, description="mesh size at the first level, per axis")
    spline_order: int = Field(3, ge=1, le=3)
    bias_field_fwhm: float = Field(0.15, gt=0)


class IntensitySettings(_Strict):
    """Normalisation and slice equalisation (``pipeline.intensity``).

    ``wm-peak`` (default): intensities are divided by the white-matter level of the head's core
    (``models.normalize.wm_peak_scale``, what the 0.2 networks were trained with), so white
    matter sits near 1 whatever the scanner's scale or the scalp; ``percentile``: by the given
    percentile of the head-mask voxels (release 0.1). The divisor is kept and multiplied back
    afterwards, so outputs come back in the source's range.
    """

    normalisation: Literal["wm-peak", "percentile", "none"] = "wm-peak"
    percentile: float = Field(99.0, gt=50, le=100)
    slice_equalisation: bool = False
    equalisation_match_points: int = Field(7, ge=1, le=64)
    equalisation_histogram_levels: int = Field(256, ge=16, le=4096)


class EnhanceSettings(_Strict):
    """How the through-plane factor is chosen (``pipeline.enhance``).

    Without ``factor`` the smallest supported factor whose output spacing is at most
    ``target_spacing_mm`` is used (``None``: the in-plane pixel size, i.e. near-isotropic output),
    else the largest supported factor.
    """

    factor: int | None = Field(None, ge=2)
    target_spacing_mm: float | None = Field(None, gt=0)


class OutputSettings(_Strict):
    """How the derived series is written (``pipeline.derive``)."""

    format: Literal["sc", "mr"] = "sc"
    series_number_offset: int = Field(
        1000, ge=1, description="derived SeriesNumber = source SeriesNumber + offset"
    )
    description_suffix: str = Field("IQT", max_length=16)
    uid_root: str | None = Field(
        None,
        pattern=r"^[0-9]+(\.[0-9]+)*\.$",
        description="org root for derived UIDs; None: 2.25. name-based UUID UIDs",
    )
    manufacturer: str = "dicomnode"
    institution_name: str | None = None
    review_below_db: float | None = Field(
        None,
        description="a data-consistency score below this marks the series for review "
        "(review_marker appended to SeriesDescription); None: never",
    )
    review_marker: str = Field("REVIEW", min_length=1, max_length=16)


class PipelineSettings(_Strict):
    """Everything ``pipeline.run.enhance_series`` needs besides the instances and the engine."""

    volume: VolumeSettings = Field(default_factory=VolumeSettings)
    n4: N4Settings = Field(default_factory=N4Settings)
    intensity: IntensitySettings = Field(default_factory=IntensitySettings)
    enhance: EnhanceSettings = Field(default_factory=EnhanceSettings)
    output: OutputSettings = Field(default_factory=OutputSettings)

    def digest(self) -> str:
        """A stable hash of every setting, used in derived UIDs (see ``pipeline.uids``)."""
        text = self.model_dump_json()
        return hashlib.sha256(text.encode()).hexdigest()
