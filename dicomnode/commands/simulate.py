"""``dicomnode simulate``: make a low-field acquisition from a high-field head (Lin et al. Alg. 1).

For physicists checking the simulator, and for making test inputs. Input is a shipped brain
(``--brain``) or a NIfTI T1 with its brain mask (tissue maps from a 3-class mixture). Output is a
NIfTI of the thick axial slices, with the affine placing each slice at the centre of the thin
slices it integrates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def simulate(
    out: Annotated[Path, typer.Argument(help="Output NIfTI (.nii or .nii.gz).")],
    brain: Annotated[
        str | None, typer.Option("--brain", help="Shipped brain name (see models/brains.py).")
    ] = None,
    image: Annotated[
        Path | None, typer.Option("--image", help="High-field T1 NIfTI instead of --brain.")
    ] = None,
    mask: Annotated[
        Path | None, typer.Option("--mask", help="Brain mask NIfTI for --image.")
    ] = None,
    factor: Annotated[int, typer.Option("--factor", "-k", help="Slices per thick slice.")] = 4,
    profile: Annotated[
        str, typer.Option("--profile", help="0.36T, 64mT or a profile TOML file.")
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

    if (brain is None) == (image is None):
        raise typer.BadParameter("give exactly one of --brain or --image")
    fixed = None
    if snr is not None:
        try:
            wm_s, gm_s = (float(v) for v in snr.split(","))
        except ValueError:
            raise typer.BadParameter(
                "expected 'WM,GM', e.g. 64.5,54.1", param_hint="--snr"
            ) from None
        fixed = (wm_s, gm_s)
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
