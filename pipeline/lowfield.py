"""High field to low field as a DICOM series: what ``dicomnode simulate`` writes.

Sites use it to plan protocols and to test their routing before a low-field scanner is
installed, so the series must look like what that scanner would send: the profile's slice
geometry (``models/profiles/*.toml`` ``[geometry]``), its contrast (``[sequence]``, rendered
from tissue maps by ``models.contrast``), its SNR (``[snr]``) and the sequence parameters a
routing rule reads (MagneticFieldStrength, RepetitionTime, EchoTime, InversionTime). It is
marked as simulated in SeriesDescription, ImageComments and the patient name, so it can never
pass for a patient's scan.

Contrast: a T1 profile keeps the source's own T1 intensities (the simulator of Lin et al.
rescales grey matter to the profile's SNR pair); T2, FLAIR and PD are rendered from the tissue
maps (``sum_t p_t S_t``), so inside a tissue they carry the maps' texture, not the anatomy's,
and outside the brain mask (scalp, skull) they are dark. Tissue maps come with a shipped brain,
or from a 3-class mixture of a T1-weighted source inside its brain (or head) mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset

from models.contrast.signal import Sequence
from models.contrast.synthesis import render
from models.profile import FieldProfile, Geometry
from models.simulate import TissueMaps
from pipeline.sample import (
    AXIAL,
    Acquisition,
    Head,
    Shading,
    SimulatedAcquisition,
    build_series,
    deterministic_uid,
    head_from_brain,
    plan_acquisition,
    simulate_acquisition,
)

SIMULATED = "SIMULATED"
_SCANNING = {"spin-echo": "SE", "inversion-recovery": "IR", "gradient-echo": "GR"}


@dataclass
class SourceHead:
    """A high-field head in LPS with its tissue maps: what a simulation starts from."""

    head: Head
    csf: sitk.Image
    t1_weighted: bool = True


def source_from_brain(brain: object) -> SourceHead:
    """A shipped brain (``models.brains.Brain``), with its own tissue maps."""
    head = head_from_brain(brain)
    csf = brain.tissue.csf  # type: ignore[attr-defined]
    if csf is None:
        mask = np.asarray(brain.brain_mask, np.float32)  # type: ignore[attr-defined]
        csf = np.clip(mask - brain.tissue.gm - brain.tissue.wm, 0.0, 1.0)  # type: ignore[attr-defined]
    return SourceHead(head, head.image_like(csf))


def source_from_image(image: sitk.Image, mask: sitk.Image | None = None) -> SourceHead:
    """A T1-weighted volume in patient space (a DICOM series or a NIfTI) and optionally its
    brain mask; the tissue maps are a 3-class mixture inside the mask (the head mask of
    ``pipeline.mask`` without one, where scalp fat joins the brightest class)."""
    from models.tissue import gmm_tissue_maps
    from pipeline.mask import head_mask

    image = sitk.Cast(image, sitk.sitkFloat32)
    array = np.clip(sitk.GetArrayFromImage(image), 0.0, None)
    if mask is None:
        mask = head_mask(image)
    mask_array = sitk.GetArrayFromImage(mask) > 0.5
    maps = gmm_tissue_maps(array, mask_array)

    def like(a: np.ndarray) -> sitk.Image:
        out = sitk.GetImageFromArray(np.ascontiguousarray(a, dtype=np.float32))
        out.CopyInformation(image)
        return out

    spacing = image.GetSpacing()
    head = Head(
        name="input",
        t1=like(array),
        gm=like(maps.gm),
        wm=like(maps.wm),
        brain_mask=like(mask_array.astype(np.float32)),
        voxel_mm=float(min(spacing)),
        scalp=False,
    )
    return SourceHead(head, like(maps.csf))


def contrast_head(source: SourceHead, profile: FieldProfile) -> Head:
    """The head with the profile's contrast (see the module docstring)."""
    if profile.contrast == "T1" and source.t1_weighted:
        return source.head
    if profile.sequence is None:
        raise ValueError(f"profile {profile.name} has no [sequence]: its contrast is unknown")
    h = source.head
    maps = TissueMaps(
        gm=sitk.GetArrayFromImage(h.gm),
        wm=sitk.GetArrayFromImage(h.wm),
        csf=sitk.GetArrayFromImage(source.csf),
    )
    rendered = render(maps, profile.sequence, profile.field_strength_t)
    return Head(h.name, h.image_like(rendered), h.gm, h.wm, h.brain_mask, h.voxel_mm, h.scalp)


def sequence_attributes(sequence: Sequence | None) -> dict[str, object]:
    """The MR attributes routing rules read, from the profile's sequence."""
    if sequence is None:
        return {}
    out: dict[str, object] = {
        "RepetitionTime": f"{sequence.tr_ms:g}",
        "EchoTime": f"{sequence.te_ms:g}",
        "ScanningSequence": _SCANNING[sequence.kind],
        "FlipAngle": f"{sequence.flip_deg:g}",
    }
    if sequence.ti_ms is not None:
        out["InversionTime"] = f"{sequence.ti_ms:g}"
    return out


def simulate_series(
    source: SourceHead,
    profile: FieldProfile,
    *,
    snr: tuple[float, float] | None = None,
    seed: int = 0,
    frame_of_reference_uid: str | None = None,
    series_number: int = 901,
    geometry: Geometry | None = None,
    shading: Shading | None = None,
) -> tuple[list[Dataset], Acquisition, SimulatedAcquisition]:
    """The profile's low-field axial acquisition of ``source``, as MR Image Storage instances.

    ``snr`` (SNR_WM, SNR_GM) fixes the noise; otherwise it is drawn from the profile with
    ``seed``. ``frame_of_reference_uid``: the source's, so a viewer can relate the simulated
    slices to the source volume (positions are in the source's patient coordinates).
    ``geometry`` replaces the profile's slice geometry and ``shading`` adds a receive-coil
    shading: the quality bench (``bench/bench_contrasts.py``) asks for other slice spacings, so
    that every profile is measured at k = 4 and 8, through this same code.
    """
    g = geometry or profile.geometry
    if g is None:
        raise ValueError(f"profile {profile.name} has no [geometry]")
    snr_pair = snr if snr is not None else profile.draw_snr(np.random.default_rng(seed))
    field_mt = profile.field_strength_t * 1000.0
    field_text = f"{field_mt:.0f}mT" if field_mt < 100 else f"{profile.field_strength_t:g}T"
    comments = (
        f"{SIMULATED}: low-field acquisition simulated by dicomnode simulate from a high-field "
        f"volume (profile {profile.name}, SNR WM {snr_pair[0]:.1f} GM {snr_pair[1]:.1f}, "
        f"seed {seed}); not acquired from a patient, not for diagnosis"
    )
    extra = {**sequence_attributes(profile.sequence), "ImageComments": comments}
    head = contrast_head(source, profile)
    acq = plan_acquisition(
        head,
        AXIAL,
        g.pixel_mm,
        g.slice_spacing_mm,
        g.slice_thickness_mm,
        field_strength=profile.field_strength_t,
        series_description=f"{SIMULATED} {profile.contrast} AX {field_text}",
        snr_wm_gm=(float(snr_pair[0]), float(snr_pair[1])),
        seed=seed,
        patient_name=f"{SIMULATED}^LOWFIELD",
        patient_id=f"SIM{seed:04d}",
        series_number=series_number,
        frame_of_reference_uid=frame_of_reference_uid,
        extra=extra,
        shading=shading,
    )
    acq.series_uid = deterministic_uid("simulated", profile.name, seed, acq.center, acq.slices)
    simulated = simulate_acquisition(head, acq)
    return build_series(acq, pixels=simulated.pixels), acq, simulated
