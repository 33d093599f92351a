"""Run a through-plane engine on a volume and put the result back on a patient grid.

This step owns geometry so that engines only see arrays (``models.engine``): it picks the factor
``k``, brings the slice axis (the axis with the largest spacing) to array axis 0, normalises,
calls ``engine.upsample``, inverts the normalisation and builds the output image: same in-plane
grid and direction, ``n*k`` slices of spacing ``s/k``, origin moved back by ``(k-1)/2`` thin
steps along the slice direction so that each acquired slice is replaced by ``k`` thin slices
centred on it. Same frame of reference: no resampling in patient space ever happens.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from models.engine import EngineInfo, ThroughPlaneEngine
from pipeline.errors import EnhanceError
from pipeline.intensity import Normalisation, fit_normalisation
from pipeline.settings import EnhanceSettings, IntensitySettings

log = logging.getLogger(__name__)


@dataclass
class Enhanced:
    image: sitk.Image
    factor: int
    engine: EngineInfo
    normalisation: Normalisation
    consistency_psnr_db: float | None = None
    notes: dict[str, object] = field(default_factory=dict)


def choose_factor(
    slice_spacing: float,
    pixel_spacing: float,
    supported: tuple[int, ...],
    settings: EnhanceSettings | None = None,
) -> int:
    """The through-plane factor for this geometry and engine.

    An explicit ``settings.factor`` must be supported. Otherwise: the smallest supported factor
    that brings the slice spacing down to the target (``target_spacing_mm``, default the in-plane
    pixel size), else the largest supported one. Refuses data that is already as thin as the
    target, where through-plane super-resolution has nothing to do.
    """
    settings = settings or EnhanceSettings()
    factors = sorted(supported)
    if not factors:
        raise EnhanceError("no-factor", "the engine supports no factor")
    if settings.factor is not None:
        if settings.factor not in factors:
            raise EnhanceError(
                "unsupported-factor",
                f"factor {settings.factor} is not supported by the engine (supported: {factors})",
            )
        return settings.factor
    target = settings.target_spacing_mm or pixel_spacing
    if slice_spacing <= target * 1.05:
        raise EnhanceError(
            "already-thin",
            f"slice spacing {slice_spacing:.3g} mm is already at the target {target:.3g} mm",
        )
    for k in factors:
        # 0.1 % slack: positions written with six decimals on an oblique slice normal give
        # 4.8000022 mm for 4.8 mm, which must not tip 1.2 mm pixels from k = 4 to k = 8.
        if slice_spacing / k <= target * (1 + 1e-3):
            return k
    return factors[-1]


def _accepts_spacing(engine: ThroughPlaneEngine) -> bool:
    """Whether the engine takes the optional ``spacing_mm`` keyword (engines written before it
    existed, e.g. third-party plug-ins, keep working without it)."""
    try:
        return "spacing_mm" in inspect.signature(engine.upsample).parameters
    except (TypeError, ValueError):
        return False


def slice_axis_last(image: sitk.Image) -> sitk.Image:
    """Permute the image axes so the slice axis (largest spacing) is z, i.e. array axis 0."""
    spacing = image.GetSpacing()
    axis = int(np.argmax(spacing))
    if axis == 2:
        return image
    order = [a for a in range(3) if a != axis] + [axis]
    return sitk.PermuteAxes(image, order)


def output_grid(image: sitk.Image, factor: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(origin, spacing) of the enhanced grid for ``image`` (slice axis z) and ``factor``."""
    spacing = image.GetSpacing()
    thin = spacing[2] / factor
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    origin = np.asarray(image.GetOrigin()) - direction[:, 2] * thin * (factor - 1) / 2
    return tuple(float(v) for v in origin), (spacing[0], spacing[1], thin)


def enhance_volume(
    image: sitk.Image,
    engine: ThroughPlaneEngine,
    *,
    mask: sitk.Image | None = None,
    thickness_ratio: float = 1.0,
    enhance: EnhanceSettings | None = None,
    intensity: IntensitySettings | None = None,
) -> Enhanced:
    """Super-resolve ``image`` through-plane with ``engine``; the result is in source units."""
    intensity = intensity or IntensitySettings()
    image = slice_axis_last(sitk.Cast(image, sitk.sitkFloat32))
    if mask is not None:
        mask = slice_axis_last(mask)
    spacing = image.GetSpacing()
    factor = choose_factor(
        spacing[2], min(spacing[0], spacing[1]), tuple(engine.supported_factors), enhance
    )
    array = sitk.GetArrayFromImage(image)
    mask_array = sitk.GetArrayViewFromImage(mask) if mask is not None else None
    # Array axes (slice, row, column): sitk spacing is (column, row, slice).
    array_spacing = (float(spacing[2]), float(spacing[1]), float(spacing[0]))
    normalisation = fit_normalisation(array, mask_array, intensity, array_spacing)
    info = engine.info
    log.info("engine %s %s, factor %d", info.name, info.version, factor)
    extra = {"spacing_mm": array_spacing} if _accepts_spacing(engine) else {}
    try:
        result = engine.upsample(normalisation.apply(array), factor, thickness_ratio, **extra)
    except Exception as exc:
        raise EnhanceError("engine-failed", f"engine {info.name} failed: {exc}") from exc
    expected = (array.shape[0] * factor,) + array.shape[1:]
    if tuple(result.volume.shape) != expected:
        raise EnhanceError(
            "engine-failed",
            f"engine {info.name} returned shape {result.volume.shape}, expected {expected}",
        )
    out = normalisation.invert(np.asarray(result.volume, dtype=np.float32))
    # Cubic interpolation and networks overshoot a little at edges; never below the input floor.
    np.maximum(out, float(array.min()), out=out)
    enhanced = sitk.GetImageFromArray(out)
    origin, new_spacing = output_grid(image, factor)
    enhanced.SetOrigin(origin)
    enhanced.SetSpacing(new_spacing)
    enhanced.SetDirection(image.GetDirection())
    return Enhanced(
        enhanced, factor, info, normalisation, result.consistency_psnr_db, dict(result.notes)
    )
