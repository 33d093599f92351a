"""``dicomnode simulate``: make a low-field acquisition from a high-field head.

Two outputs:

- ``OUT.nii`` / ``OUT.nii.gz``: Lin et al.'s Algorithm 1 on array slices (for physicists
  checking the simulator): thick axial slices of a shipped brain (``--brain``) or a NIfTI T1
  with its brain mask, the affine placing each slice at the centre of the thin slices it
  integrates.
- a folder: a low-field DICOM series (``pipeline.lowfield``) with the profile's geometry,
  contrast, SNR and sequence parameters, in the source's patient coordinates, marked as
  simulated; from a shipped brain, a NIfTI (``--image``) or a DICOM series (``--input``).
  Sites use it to plan protocols and test their routing before a scanner is installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def simulate(
    out: Annotated[
        Path,
        typer.Argument(help="Output NIfTI (.nii or .nii.gz), or a folder for a DICOM series."),
    ],
    brain: Annotated[
        str | None, typer.Option("--brain", help="Shipped brain name (see models/brains.py).")
    ] = None,
    image: Annotated[
        Path | None, typer.Option("--image", help="High-field T1 NIfTI instead of --brain.")
    ] = None,
    source_series: Annotated[
        Path | None,
        typer.Option(
            "--input", help="High-field T1 DICOM series (folder) instead of --brain (DICOM out)."
        ),
    ] = None,
    mask: Annotated[
        Path | None, typer.Option("--mask", help="Brain mask NIfTI for --image.")
    ] = None,
    factor: Annotated[
        int, typer.Option("--factor", "-k", help="Slices per thick slice (NIfTI output only).")
    ] = 4,
    profile: Annotated[
        str,
        typer.Option(
            "--profile",
            help="T1-0.36T, T2-0.36T, FLAIR-0.36T, T1-64mT, T2-64mT, FLAIR-64mT, 0.36T, 64mT "
            "or a profile TOML file.",
        ),
    ] = "0.36T",
    snr: Annotated[
        str | None, typer.Option("--snr", help="Fixed 'WM,GM' SNR instead of a random draw.")
    ] = None,
    noise: Annotated[str, typer.Option("--noise", help="gaussian or rician.")] = "gaussian",
    thickness_ratio: Annotated[
        float, typer.Option("--thickness-ratio", help="Slice thickness / spacing (<1: gaps).")
    ] = 1.0,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Simulate axial thick slices with the low-field SNR and contrast of PROFILE."""
    import nibabel as nib
    import numpy as np

    from models.brains import load_brain
    from models.profile import load_profile
    from models.simulate import TissueMaps, simulate_low_field
    from models.tissue import gmm_tissue_maps

    if sum(x is not None for x in (brain, image, source_series)) != 1:
        raise typer.BadParameter("give exactly one of --brain, --image or --input")
    fixed = None
    if snr is not None:
        try:
            wm_s, gm_s = (float(v) for v in snr.split(","))
        except ValueError:
            raise typer.BadParameter(
                "expected 'WM,GM', e.g. 64.5,54.1", param_hint="--snr"
            ) from None
        fixed = (wm_s, gm_s)
    nifti_out = out.name.endswith((".nii", ".nii.gz"))
    if not nifti_out or source_series is not None:
        _simulate_dicom(out, brain, image, source_series, mask, profile, fixed, seed)
        return
    if brain is not None:
        b = load_brain(brain)
        t1, maps, affine = (
            b.t1,
            TissueMaps(b.tissue.gm, b.tissue.wm),
            np.diag([b.voxel_mm] * 3 + [1.0]),
        )
    else:
        if mask is None:
            raise typer.BadParameter("--image needs --mask (tissue maps come from a mixture)")
        img = nib.as_closest_canonical(nib.load(image))
        t1 = np.ascontiguousarray(
            np.transpose(
                np.asarray(img.dataobj, np.float32)[..., 0]
                if img.ndim == 4
                else np.asarray(img.dataobj, np.float32),
                (2, 1, 0),
            )
        )
        m = np.transpose(
            np.asarray(nib.as_closest_canonical(nib.load(mask)).dataobj) > 0.5, (2, 1, 0)
        )
        maps = gmm_tissue_maps(np.clip(t1, 0, None), m)
        affine = img.affine
    sim = simulate_low_field(
        t1,
        maps,
        factor,
        load_profile(profile),
        np.random.default_rng(seed),
        thickness_ratio=thickness_ratio,
        snr=fixed,
        noise=noise,
    )
    # Thick slice i sits at thin coordinate i*k + (k-1)/2 along NIfTI z.
    step = np.eye(4)
    step[2, 2] = factor
    step[2, 3] = (factor - 1) / 2.0
    out_img = nib.Nifti1Image(np.transpose(sim.low_field, (2, 1, 0)), affine @ step)
    nib.save(out_img, str(out))
    typer.echo(
        f"{out}: {sim.low_field.shape[0]} slices, SNR WM {sim.snr_wm:.1f} GM {sim.snr_gm:.1f}, "
        f"noise sigma {sim.sigma:.4g}, GM scale {sim.gm_scale:.3f}"
    )


def _simulate_dicom(
    out: Path,
    brain: str | None,
    image: Path | None,
    source_series: Path | None,
    mask: Path | None,
    profile_name: str,
    snr: tuple[float, float] | None,
    seed: int,
) -> None:
    """The low-field DICOM series of ``pipeline.lowfield`` into the folder ``out``."""
    import SimpleITK as sitk

    from dicomnode.identity import stamp
    from models.brains import load_brain
    from models.profile import load_profile
    from pipeline.errors import PipelineError
    from pipeline.io import read_series, write_datasets
    from pipeline.lowfield import simulate_series, source_from_brain, source_from_image
    from pipeline.volume import read_volume

    if out.exists() and not out.is_dir():
        raise typer.BadParameter(f"{out} is a file: give a folder (or a .nii/.nii.gz name)")
    try:
        profile = load_profile(profile_name)
    except (KeyError, OSError, ValueError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--profile") from None
    frame_of_reference = None
    try:
        if brain is not None:
            source = source_from_brain(load_brain(brain))
        elif image is not None:
            brain_mask = sitk.ReadImage(str(mask)) if mask is not None else None
            source = source_from_image(sitk.ReadImage(str(image)), brain_mask)
        else:
            datasets = read_series([source_series])
            volume = read_volume(datasets)
            frame_of_reference = datasets[0].get("FrameOfReferenceUID")
            source = source_from_image(volume.image)
        datasets, acq, simulated = simulate_series(
            source, profile, snr=snr, seed=seed, frame_of_reference_uid=frame_of_reference
        )
    except PipelineError as exc:
        typer.echo(f"error {exc}", err=True)
        raise typer.Exit(2) from exc
    for ds in datasets:
        stamp(ds)
    paths = write_datasets(datasets, out)
    typer.echo(
        f"{out}: {len(paths)} simulated {profile.name} instances ({acq.rows}x{acq.columns}, "
        f"{acq.pixel_spacing:g} mm pixels, {acq.slice_thickness:g} mm slices every "
        f"{acq.slice_spacing:g} mm), SNR WM {simulated.snr_target[0]:.1f} GM "
        f"{simulated.snr_target[1]:.1f}, series {datasets[0].SeriesInstanceUID}"
    )
