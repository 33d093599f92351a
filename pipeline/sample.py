"""Realistic low-field MR series built from real brains shipped in PyPI wheels.

No real multi-slice MR DICOM series ships in any package (see DESIGN.md), yet the node, its tests,
its benchmarks and the demo all need series that look like what a 0.36 T scanner sends: thick
slices with gaps, noise, correct patient geometry and the MR tags that routing rules look at.
This module resamples a shipped high-field brain onto an acquisition grid of our choosing
(any orientation, thickness and gap), blurs it with a Gaussian slice profile, adds Rician noise
and writes classic single-frame MR Image Storage instances.

Two simulators share the geometry (``Acquisition``) and the writer (``build_series``):

- ``acquire(image, acq)``: the original quick one (one T1 image, intensities scaled to a maximum
  of 1000, noise from one SNR figure); the demo, the node tests and the benchmarks use it;
- ``simulate_acquisition(head, acq)``: the quality benchmark's (``bench/bench_quality.py``): a
  ``Head`` (T1 with tissue maps and brain mask in patient space, from ``models.brains``),
  the 0.36 T contrast and noise of Lin et al. 2019 (``Acquisition.snr_wm_gm``), a smooth
  receive-coil shading (``Shading``), in-plane resolution matched to the pixel size and a
  slice profile that integrates real anatomy beyond the first and last slices too (no darkened
  end slices). It returns what the truth needs (the grey-matter scale it applied).

Both draw their noise with ``models.simulate.add_noise`` and the quality bench's contrast with
``models.simulate.scale_grey_matter``: the training simulator's own physics, applied here in
patient space instead of on arrays, so that training and evaluation cannot drift apart.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

from models.simulate import add_noise, scale_grey_matter
from pipeline.io import write_datasets

UID_ROOT = "1.2.826.0.1.3680043.10.1345."
"""Our UID root for synthetic data (under the pydicom-registered prefix family)."""

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)


def deterministic_uid(*parts: object) -> str:
    """A UID that depends only on its inputs, so test series are reproducible."""
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()
    return (UID_ROOT + str(int(digest[:30], 16)))[:64]


def load_brain(name: str = "mni152_2009a") -> sitk.Image:
    """Load a brain shipped inside a PyPI wheel as a float32 SimpleITK image in LPS.

    ``mni152_2009a`` is nilearn's MNI152 2009a T1 template (1 mm, values 0..1).
    """
    if name != "mni152_2009a":
        raise ValueError(f"unknown brain {name!r}; available: mni152_2009a")
    from nilearn import datasets

    nifti = datasets.load_mni152_template(resolution=1)
    return _nifti_to_sitk(np.asarray(nifti.get_fdata(), dtype=np.float32), nifti.affine)


def _nifti_to_sitk(data: np.ndarray, affine_ras: np.ndarray) -> sitk.Image:
    """NIfTI stores RAS; DICOM and SimpleITK think in LPS, so flip x and y."""
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine_ras, dtype=float)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    direction = affine[:3, :3] / spacing
    image = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in affine[:3, 3]])
    image.SetDirection([float(d) for d in direction.ravel()])
    return image


@dataclass
class Acquisition:
    """The geometry and scanner settings of one synthetic acquisition.

    Defaults give a typical 0.36 T axial T1 spin echo: 256x256 at 0.9 mm, 30 slices of 5 mm
    every 6 mm (a 1 mm gap), covering the whole brain.
    """

    orientation: Sequence[float] = AXIAL
    rows: int = 256
    columns: int = 256
    pixel_spacing: float = 0.9
    slices: int = 30
    slice_thickness: float = 5.0
    slice_spacing: float = 6.0
    center: Sequence[float] = (0.0, -18.0, 18.0)
    field_strength: float = 0.36
    series_description: str = "T1 AX SE"
    snr: float = 25.0
    seed: int = 0
    patient_name: str = "DEMO^LOWFIELD"
    patient_id: str = "LF0001"
    study_uid: str | None = None
    series_uid: str | None = None
    frame_of_reference_uid: str | None = None
    series_number: int = 3
    extra: dict[str, object] = field(default_factory=dict)
    snr_wm_gm: tuple[float, float] | None = None
    """(SNR_WM, SNR_GM) of Lin et al. for ``simulate_acquisition``; ``None``: (snr, 0.84 snr)."""
    shading: Shading | None = None
    """Receive-coil shading for ``simulate_acquisition``; ``None``: a uniform coil."""
    wm_level: float = 600.0
    """Mean white-matter pixel value of ``simulate_acquisition`` (before shading and noise):
    low enough that scalp fat, shading and noise stay below the 12-bit ceiling of 4095."""

    def normal(self) -> np.ndarray:
        row = np.asarray(self.orientation[:3], dtype=float)
        col = np.asarray(self.orientation[3:], dtype=float)
        return np.cross(row, col)

    def slice_positions(self) -> list[np.ndarray]:
        """Top-left voxel centre of each slice, in LPS millimetres."""
        row = np.asarray(self.orientation[:3], dtype=float)
        col = np.asarray(self.orientation[3:], dtype=float)
        normal = self.normal()
        centre = np.asarray(self.center, dtype=float)
        corner = (
            centre
            - row * self.pixel_spacing * (self.columns - 1) / 2
            - col * self.pixel_spacing * (self.rows - 1) / 2
        )
        offsets = (np.arange(self.slices) - (self.slices - 1) / 2) * self.slice_spacing
        return [corner + normal * off for off in offsets]


def acquire(brain: sitk.Image, acq: Acquisition) -> np.ndarray:
    """Simulate the acquisition: slice profile, sampling every slice_spacing, Rician noise.

    Returns uint16 pixels shaped (slices, rows, columns).
    """
    # Blur along the slice normal with a Gaussian whose FWHM is the slice thickness, on an
    # intermediate grid aligned with the acquisition so that the blur is truly through-plane.
    row = np.asarray(acq.orientation[:3], dtype=float)
    col = np.asarray(acq.orientation[3:], dtype=float)
    normal = acq.normal()
    fine_step = 1.0
    first = acq.slice_positions()[0]
    extent = (acq.slices - 1) * acq.slice_spacing
    fine_count = int(round(extent / fine_step)) + 1
    reference = sitk.Image([acq.columns, acq.rows, fine_count], sitk.sitkFloat32)
    reference.SetSpacing([acq.pixel_spacing, acq.pixel_spacing, fine_step])
    reference.SetOrigin([float(v) for v in first])
    reference.SetDirection([float(v) for v in np.column_stack([row, col, normal]).ravel()])
    fine = sitk.Resample(brain, reference, sitk.Transform(), sitk.sitkLinear, 0.0)
    sigma_mm = acq.slice_thickness / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    array = sitk.GetArrayFromImage(fine).astype(np.float32)
    from scipy.ndimage import gaussian_filter1d

    array = gaussian_filter1d(array, sigma=sigma_mm / fine_step, axis=0, mode="constant")
    indices = np.round(np.arange(acq.slices) * acq.slice_spacing / fine_step).astype(int)
    sampled = array[indices]
    signal = sampled / max(float(sampled.max()), 1e-6) * 1000.0
    rng = np.random.default_rng(acq.seed)
    sigma_noise = 1000.0 * 0.6 / acq.snr  # SNR quoted against mean brain (about 0.6 of max)
    magnitude = add_noise(signal, sigma_noise, rng, "rician")
    return np.clip(np.round(magnitude), 0, 4095).astype(np.uint16)


# --- The quality benchmark's simulator: a whole head, 0.36 T contrast, shading, Rician noise ---

FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
FINE_STEP_MM = 0.5
"""Upper bound of the through-plane step on which the slice profile is integrated."""


@dataclass
class Head:
    """A high-field head in patient space (LPS): T1, tissue maps and brain mask on one grid.

    ``gm``/``wm`` are soft probabilities and ``brain_mask`` is 0/1, all float32, so that each
    resamples linearly with the image onto any acquisition grid (and ``> 0.5`` gives hard masks
    there). ``scalp`` says whether the head has scalp and skull around the brain (nilearn's
    MNI152 2009a template is skull-stripped: zero outside the brain).
    """

    name: str
    t1: sitk.Image
    gm: sitk.Image
    wm: sitk.Image
    brain_mask: sitk.Image
    voxel_mm: float
    scalp: bool

    def image_like(self, array: np.ndarray) -> sitk.Image:
        """An array in the brain's (z, y, x) layout as an image on the head's grid."""
        image = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.float32))
        image.CopyInformation(self.t1)
        return image

    def points(self, mask: np.ndarray, step: int = 1) -> np.ndarray:
        """LPS coordinates (N, 3) of the voxels of ``mask`` ((z, y, x) layout), every ``step``."""
        index = np.argwhere(mask)[::step][:, ::-1].astype(np.float64)  # (i, j, k) = (x, y, z)
        direction = np.asarray(self.t1.GetDirection()).reshape(3, 3)
        spacing = np.asarray(self.t1.GetSpacing())
        return np.asarray(self.t1.GetOrigin()) + (index * spacing) @ direction.T

    def brain_array(self) -> np.ndarray:
        return sitk.GetArrayViewFromImage(self.brain_mask) > 0.5

    def head_array(self) -> np.ndarray:
        """Foreground of the T1: above 10 % of the 99th percentile of its non-zero voxels."""
        t1 = sitk.GetArrayViewFromImage(self.t1)
        return t1 > 0.1 * float(np.percentile(t1[t1 > 0], 99))

    def low_field_t1(self, gm_scale: float) -> sitk.Image:
        """The T1 with grey matter scaled softly by ``gm_scale`` (a voxel p parts GM by
        1 + p (s - 1)): the simulator's low-field contrast before any blur, shading or noise."""
        t1 = sitk.GetArrayViewFromImage(self.t1)
        gm = np.clip(sitk.GetArrayViewFromImage(self.gm), 0.0, 1.0)
        return self.image_like(t1 * (1.0 + gm * (gm_scale - 1.0)))


def head_from_brain(brain: object) -> Head:
    """A ``models.brains.Brain`` ((z, y, x) arrays in RAS-canonical voxel order) in LPS.

    The affine is diag(voxel_mm) with the origin chosen so that the centre of the brain mask's
    bounding box lies at patient position (0, 0, 0); x index grows towards the patient's right
    (-L), y towards anterior (-P), z towards superior (+S), as ``_nifti_to_sitk`` converts.
    """
    from models.brains import Brain

    if not isinstance(brain, Brain):
        raise TypeError(f"expected models.brains.Brain, got {type(brain).__name__}")
    mm = float(brain.voxel_mm)
    mask = np.asarray(brain.brain_mask, bool)
    nz = np.nonzero(mask)
    centre_zyx = np.array([(a.min() + a.max()) / 2.0 for a in nz])
    affine = np.diag([mm, mm, mm, 1.0])
    affine[:3, 3] = -mm * centre_zyx[::-1]

    def image(array: np.ndarray) -> sitk.Image:
        data = np.asarray(array, dtype=np.float32).transpose(2, 1, 0)
        return _nifti_to_sitk(data, affine)

    t1 = np.clip(np.asarray(brain.t1, np.float32), 0.0, None)
    head = t1 > 0.1 * float(np.percentile(t1[t1 > 0], 99))
    scalp = bool((head & ~mask).sum() > 0.2 * mask.sum())
    return Head(
        name=brain.name,
        t1=image(t1),
        gm=image(brain.tissue.gm),
        wm=image(brain.tissue.wm),
        brain_mask=image(mask),
        voxel_mm=mm,
        scalp=scalp,
    )


@dataclass(frozen=True)
class Shading:
    """A smooth multiplicative receive-coil shading ``exp(L(p))`` over the whole head.

    ``L`` is a random quadratic polynomial of the patient position ``p`` (LPS mm) about the
    brain's centre ``c``: ``L(p) = sum_j a_j m_j((p - c) / radius_mm)`` over the nine monomials
    x, y, z, x^2, y^2, z^2, xy, xz, yz, with ``a_j ~ N(0, 1)`` drawn from ``seed``. It is then
    shifted to mean 0 over the brain and scaled so that max |L| over the brain is
    log(1 + amplitude): inside the brain the field spans [1/(1 + a), 1 + a] ("+-20 %" for
    a = 0.2), its extremes on the brain's border. Beyond the brain (scalp, neck, air) L is
    clipped to +-2 log(1 + a), so the field never exceeds what a coil element close to the
    scalp gives. Real receive arrays shade more near the surface than at the centre, which a
    quadratic does too.
    """

    amplitude: float
    seed: int = 0
    radius_mm: float = 80.0

    def fit(self, head: Head) -> ShadingFit:
        """Draw the polynomial and normalise it over ``head``'s brain."""
        rng = np.random.default_rng(self.seed)
        coefficients = rng.normal(0.0, 1.0, 9)
        brain = head.points(head.brain_array())
        centre = (brain.min(axis=0) + brain.max(axis=0)) / 2.0
        raw = ShadingFit(centre, self.radius_mm, coefficients, 0.0, 1.0, np.inf)
        values = raw.log_field(brain)
        offset = float(values.mean())
        top = float(np.abs(values - offset).max())
        bound = float(np.log1p(self.amplitude))
        scale = bound / top if top > 0 else 0.0
        return ShadingFit(centre, self.radius_mm, coefficients, offset, scale, 2.0 * bound)


@dataclass(frozen=True)
class ShadingFit:
    """A ``Shading`` drawn and normalised for one head: evaluates L at patient positions."""

    centre: np.ndarray
    radius_mm: float
    coefficients: np.ndarray
    offset: float
    scale: float
    clip: float

    def log_field(self, points: np.ndarray) -> np.ndarray:
        """L at LPS positions ``points`` (N, 3)."""
        u = (np.asarray(points, np.float64) - self.centre) / self.radius_mm
        x, y, z = u[:, 0], u[:, 1], u[:, 2]
        terms = (x, y, z, x * x, y * y, z * z, x * y, x * z, y * z)
        value = sum(c * t for c, t in zip(self.coefficients, terms, strict=True))
        value = (value - self.offset) * self.scale
        return np.clip(value, -self.clip, self.clip)

    def on_grid(self, image: sitk.Image) -> np.ndarray:
        """The multiplicative field exp(L) on ``image``'s grid (array layout (z, y, x))."""
        nx, ny, nz = image.GetSize()
        direction = np.asarray(image.GetDirection()).reshape(3, 3)
        spacing = np.asarray(image.GetSpacing())
        origin = np.asarray(image.GetOrigin())
        jj, ii = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
        plane = np.stack([ii.ravel(), jj.ravel(), np.zeros(ii.size)], axis=1) * spacing
        plane = plane @ direction.T + origin
        step = direction[:, 2] * spacing[2]
        out = np.empty((nz, ny, nx), np.float32)
        for k in range(nz):
            out[k] = np.exp(self.log_field(plane + k * step)).reshape(ny, nx)
        return out


def plan_acquisition(
    head: Head,
    orientation: Sequence[float],
    pixel_spacing: float,
    slice_spacing: float,
    slice_thickness: float,
    *,
    margin_mm: float = 10.0,
    inset_mm: float = 10.0,
    **fields: object,
) -> Acquisition:
    """An acquisition that images the whole head in-plane and cuts through the brain.

    In-plane: the field of view covers the head's extent along the row and column directions
    plus ``margin_mm`` of air on each side (an even matrix). Through-plane: slices centred on
    the brain's extent ``E`` along the slice normal, as many as fit with the outer slice centres
    at least ``inset_mm`` inside the brain (``floor((E - 2 inset) / spacing) + 1``, at least
    8), so that the outer slices, and the half slices the output extrapolates beyond them, hold
    enough brain to measure slab-edge artefacts, which is where a radiologist sees them.
    ``fields`` sets any other ``Acquisition`` field.
    """
    row = np.asarray(orientation[:3], dtype=float)
    col = np.asarray(orientation[3:], dtype=float)
    normal = np.cross(row, col)
    brain = head.points(head.brain_array(), step=7)
    whole = head.points(head.head_array(), step=7)
    along = brain @ normal
    usable = along.max() - along.min() - 2.0 * inset_mm
    slices = max(8, int(np.floor(usable / slice_spacing)) + 1)
    extents = []
    for axis in (row, col):
        projected = whole @ axis
        extents.append((float(projected.min()), float(projected.max())))
    size = max(hi - lo for lo, hi in extents) + 2 * margin_mm
    matrix = int(np.ceil(size / pixel_spacing / 2.0)) * 2
    centre = (
        row * sum(extents[0]) / 2.0
        + col * sum(extents[1]) / 2.0
        + normal * (along.max() + along.min()) / 2.0
    )
    values: dict[str, object] = dict(
        orientation=tuple(float(v) for v in orientation),
        rows=matrix,
        columns=matrix,
        pixel_spacing=float(pixel_spacing),
        slices=slices,
        slice_thickness=float(slice_thickness),
        slice_spacing=float(slice_spacing),
        center=tuple(float(v) for v in centre),
    )
    values.update(fields)
    return Acquisition(**values)  # type: ignore[arg-type]


def in_plane_resolution(image: sitk.Image, acq: Acquisition) -> sitk.Image:
    """``image`` blurred in the acquisition plane to the pixel size, before it is resampled.

    A scanner's pixel integrates its area (the k-space window), whereas resampling a 1 mm brain
    at 1.5 mm pixels would alias. Each image axis that lies mostly in the acquisition plane
    (|cosine with the normal| < 0.7) gets a Gaussian of FWHM sqrt(pixel^2 - voxel^2); nothing
    happens when pixels are no larger than the voxels. The truths of the quality benchmark get
    the same blur: the engine never changes in-plane resolution, so none is asked of it.
    """
    spacing = np.asarray(image.GetSpacing())
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    normal = acq.normal()
    sigmas = []
    for axis in range(3):
        in_plane = abs(float(direction[:, axis] @ normal)) < 0.7
        extra = acq.pixel_spacing**2 - spacing[axis] ** 2
        sigma_mm = np.sqrt(extra) * FWHM_TO_SIGMA if in_plane and extra > 0 else 0.0
        sigmas.append(sigma_mm / spacing[axis])
    if max(sigmas) == 0:
        return image
    from scipy.ndimage import gaussian_filter

    array = gaussian_filter(
        sitk.GetArrayViewFromImage(image).astype(np.float32), sigma=sigmas[::-1], mode="nearest"
    )
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    return out


@dataclass
class SimulatedAcquisition:
    """The pixels of one simulated acquisition and what produced them."""

    pixels: np.ndarray
    """uint16 (slices, rows, columns), what the DICOM instances carry."""
    sigma: float
    """Noise sigma (of each of the real and imaginary channels) in pixel units."""
    intensity_scale: float
    """Pixel value per unit of ``head.t1`` (white matter lands at ``wm_level``)."""
    gm_scale: float
    """Factor grey matter was scaled by (softly) for the low-field contrast: see
    ``Head.low_field_t1``."""
    snr_target: tuple[float, float]
    snr_measured: tuple[float, float]
    """(mean WM, mean GM) / sigma on the acquired slices, unshaded and noise-free, hard maps."""
    field_range: tuple[float, float]
    """1st and 99th percentile of the shading in the brain on the acquired slices."""


def simulate_acquisition(head: Head, acq: Acquisition) -> SimulatedAcquisition:
    """A low-field acquisition of ``head`` as ``acq`` describes it (Lin et al. 2019 contrast).

    1. The T1 and the tissue maps, blurred in-plane to the pixel size
       (``in_plane_resolution``), are resampled (linear) onto a fine grid aligned with the
       acquisition: the in-plane pixels, and through-plane a step of slice_spacing / m
       (m = ceil(spacing / 0.5 mm)) that extends 4 profile sigmas beyond the first and last
       slices, so that the outer slices integrate real anatomy, not zeros.
    2. Low-field contrast and noise level on that grid, as ``models.simulate.simulate_low_field``
       does on thick slices: the image is scaled so that mean WM (wm > 0.5) is ``wm_level``,
       sigma = mean_WM / SNR_WM, and grey matter is scaled softly by
       s = SNR_GM sigma / mean_GM (a voxel p parts GM by 1 + p (s - 1)), with
       (SNR_WM, SNR_GM) = ``acq.snr_wm_gm``. Contrast is a tissue property, so it is applied
       before the slice profile mixes tissues.
    3. The shading field ``acq.shading`` (if any) multiplies the image.
    4. Each slice integrates the fine grid with a Gaussian slice profile of FWHM
       ``slice_thickness`` centred on it (normalised over +-4 sigma); slices lie every
       ``slice_spacing``, so with thickness < spacing the gaps are never sampled.
    5. Rician noise of that sigma everywhere, background included (magnitude of a complex
       Gaussian), then rounding to 12-bit unsigned integers.
    """
    snr_wm, snr_gm = acq.snr_wm_gm or (acq.snr, 0.84 * acq.snr)
    row = np.asarray(acq.orientation[:3], dtype=float)
    col = np.asarray(acq.orientation[3:], dtype=float)
    normal = acq.normal()
    sub = max(1, int(np.ceil(acq.slice_spacing / FINE_STEP_MM - 1e-9)))
    fine_step = acq.slice_spacing / sub
    sigma_mm = acq.slice_thickness * FWHM_TO_SIGMA
    margin = int(np.ceil(4.0 * sigma_mm / fine_step))
    first = acq.slice_positions()[0]
    reference = sitk.Image(
        [acq.columns, acq.rows, (acq.slices - 1) * sub + 1 + 2 * margin], sitk.sitkFloat32
    )
    reference.SetSpacing([acq.pixel_spacing, acq.pixel_spacing, fine_step])
    reference.SetOrigin([float(v) for v in first - normal * margin * fine_step])
    reference.SetDirection([float(v) for v in np.column_stack([row, col, normal]).ravel()])

    def fine(image: sitk.Image) -> np.ndarray:
        blurred = in_plane_resolution(image, acq)
        resampled = sitk.Resample(blurred, reference, sitk.Transform(), sitk.sitkLinear, 0.0)
        return sitk.GetArrayFromImage(resampled)

    t1, gm, wm = fine(head.t1), fine(head.gm), fine(head.wm)
    wm_mask, gm_mask = wm > 0.5, gm > 0.5
    if wm_mask.sum() < 10 or gm_mask.sum() < 10:
        raise ValueError("the acquisition holds too few grey/white matter voxels to set SNR")
    intensity_scale = acq.wm_level / float(t1[wm_mask].mean())
    sigma = acq.wm_level / snr_wm
    gm_scale = snr_gm * sigma / (intensity_scale * float(t1[gm_mask].mean()))
    clean = scale_grey_matter(intensity_scale * t1, gm, gm_scale)
    del t1

    offsets = np.arange(-margin, margin + 1)
    weights = np.exp(-0.5 * (offsets * fine_step / max(sigma_mm, 1e-6)) ** 2)
    weights /= weights.sum()
    centres = margin + np.arange(acq.slices) * sub

    def profile(volume: np.ndarray) -> np.ndarray:
        out = np.zeros((acq.slices,) + volume.shape[1:], np.float64)
        for offset, weight in zip(offsets, weights, strict=True):
            out += weight * volume[centres + offset]
        return out.astype(np.float32)

    unshaded = profile(clean)
    wm_s, gm_s = profile(wm) > 0.5, profile(gm) > 0.5
    snr_measured = (
        float(unshaded[wm_s].mean()) / sigma if wm_s.any() else float("nan"),
        float(unshaded[gm_s].mean()) / sigma if gm_s.any() else float("nan"),
    )
    field_range = (1.0, 1.0)
    if acq.shading is not None and acq.shading.amplitude > 0:
        shading = acq.shading.fit(head).on_grid(reference)
        signal = profile(clean * shading)
        brain_s = profile(fine(head.brain_mask)) > 0.5
        field_s = profile(shading)[brain_s]
        if field_s.size:
            field_range = (float(np.percentile(field_s, 1)), float(np.percentile(field_s, 99)))
    else:
        signal = unshaded
    rng = np.random.default_rng(acq.seed)
    magnitude = add_noise(signal, sigma, rng, "rician")
    pixels = np.clip(np.round(magnitude), 0, 4095).astype(np.uint16)
    return SimulatedAcquisition(
        pixels=pixels,
        sigma=float(sigma),
        intensity_scale=float(intensity_scale),
        gm_scale=float(gm_scale),
        snr_target=(float(snr_wm), float(snr_gm)),
        snr_measured=snr_measured,
        field_range=field_range,
    )


def build_series(
    acq: Acquisition | None = None,
    brain: sitk.Image | Head | None = None,
    *,
    pixels: np.ndarray | None = None,
) -> list[Dataset]:
    """Build the instances of one synthetic low-field MR series, in acquisition order.

    ``brain``: an image (``acquire``) or a ``Head`` (``simulate_acquisition``); ``pixels``: an
    acquisition simulated beforehand (uint16, (slices, rows, columns)), so a caller that needs
    the simulation's details (``SimulatedAcquisition``) writes exactly those pixels.
    """
    acq = acq or Acquisition()
    if pixels is None:
        if isinstance(brain, Head):
            pixels = simulate_acquisition(brain, acq).pixels
        else:
            pixels = acquire(brain if brain is not None else load_brain(), acq)
    expected = (acq.slices, acq.rows, acq.columns)
    if tuple(pixels.shape) != expected:
        raise ValueError(f"pixels have shape {pixels.shape}, the acquisition {expected}")
    study_uid = acq.study_uid or deterministic_uid("study", acq.patient_id, acq.seed)
    series_uid = acq.series_uid or deterministic_uid(
        "series", study_uid, acq.series_number, acq.seed
    )
    for_uid = acq.frame_of_reference_uid or deterministic_uid("for", study_uid)
    now = _dt.datetime(2026, 11, 2, 9, 30, 0)
    datasets = []
    for index, position in enumerate(acq.slice_positions()):
        ds = _mr_instance(acq, pixels[index], position, index, study_uid, series_uid, for_uid, now)
        datasets.append(ds)
    return datasets


def _mr_instance(
    acq: Acquisition,
    pixels: np.ndarray,
    position: np.ndarray,
    index: int,
    study_uid: str,
    series_uid: str,
    for_uid: str,
    when: _dt.datetime,
) -> Dataset:
    sop_uid = deterministic_uid("instance", series_uid, index)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID_ROOT + "1"
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = when.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = when.strftime("%H%M%S")
    ds.AccessionNumber = "A" + acq.patient_id
    ds.Modality = "MR"
    ds.Manufacturer = "SyntheticLowField"
    ds.ManufacturerModelName = f"LF{int(acq.field_strength * 1000)}"
    ds.InstitutionName = "Test Hospital"
    ds.ReferringPhysicianName = ""
    ds.StationName = "LFMR01"
    ds.StudyDescription = "BRAIN"
    ds.SeriesDescription = acq.series_description
    ds.PatientName = acq.patient_name
    ds.PatientID = acq.patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.BodyPartExamined = "BRAIN"
    ds.ScanningSequence = "SE"
    ds.SequenceVariant = "NONE"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "2D"
    ds.SliceThickness = f"{acq.slice_thickness:g}"
    ds.RepetitionTime = "500"
    ds.EchoTime = "15"
    ds.EchoTrainLength = "1"
    ds.NumberOfAverages = "2"
    ds.ImagingFrequency = f"{acq.field_strength * 42.577:.4f}"
    ds.ImagedNucleus = "1H"
    ds.MagneticFieldStrength = f"{acq.field_strength:g}"
    ds.SpacingBetweenSlices = f"{acq.slice_spacing:g}"
    ds.ImagesInAcquisition = str(acq.slices)
    ds.FlipAngle = "90"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = str(acq.series_number)
    ds.AcquisitionNumber = "1"
    ds.InstanceNumber = str(index + 1)
    ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in acq.orientation]
    ds.FrameOfReferenceUID = for_uid
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = f"{float(np.dot(position, acq.normal())):.6f}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = acq.rows
    ds.Columns = acq.columns
    ds.PixelSpacing = [f"{acq.pixel_spacing:g}", f"{acq.pixel_spacing:g}"]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = "500"
    ds.WindowWidth = "1000"
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    for keyword, value in acq.extra.items():
        setattr(ds, keyword, value)
    return ds


def write_series(datasets: Sequence[Dataset], folder: Path | str) -> list[Path]:
    """Write instances as DICOM Part 10 files named by instance number."""
    return write_datasets(datasets, folder)


def build_legacy_multiframe(datasets: Sequence[Dataset]) -> Dataset:
    """Convert a classic series into one Legacy Converted Enhanced MR Image (multi-frame).

    Some scanners and archives send the multi-frame form; building it with highdicom from the
    same synthetic series lets tests check that both forms give the same volume.
    """
    from highdicom.legacy import LegacyConvertedEnhancedMRImage

    first = datasets[0]
    series_uid = deterministic_uid("legacy-mf", first.SeriesInstanceUID)
    return LegacyConvertedEnhancedMRImage(
        legacy_datasets=list(datasets),
        series_instance_uid=series_uid,
        series_number=int(first.SeriesNumber),
        sop_instance_uid=deterministic_uid("legacy-mf-instance", series_uid),
        instance_number=1,
    )
