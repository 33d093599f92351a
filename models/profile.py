"""Field-strength profiles: the low-field SNR distribution the simulator draws from.

Profiles live in data files (``models/profiles/*.toml``) so a new scanner can be described
without touching code; each file says where its numbers come from and whether they are an
estimate. Besides the SNR distribution a profile may give its sequence (``[sequence]``: the
contrast, rendered by ``models.contrast``), its slice geometry (``[geometry]``) and the tissue
the simulator holds fixed (``[simulator] fixed_tissue``: white matter for T1 and T2 as in Lin
et al. 2019, grey matter for FLAIR as in Lin et al. 2023).

Names: the registry's profile names (``T1-0.36T``, ``T2-0.36T``, ``FLAIR-0.36T``, ``T1-64mT``,
``T2-64mT``, ``FLAIR-64mT``), plus the older short names ``0.36T`` and ``64mT`` (T1).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from models.contrast.signal import Sequence

PROFILE_FILES = {
    "0.36T": "t1_0.36T.toml",
    "64mT": "t1_64mT.toml",
    "T1-0.36T": "t1_0.36T.toml",
    "T2-0.36T": "t2_0.36T.toml",
    "FLAIR-0.36T": "flair_0.36T.toml",
    "T1-64mT": "t1_64mT.toml",
    "T2-64mT": "t2_64mT.toml",
    "FLAIR-64mT": "flair_64mT.toml",
}
PROFILE_NAMES = tuple(k for k in PROFILE_FILES if "-" in k)
"""The registry's profile names, one per contrast and field."""
FIXED_TISSUES = ("wm", "gm")


@dataclass(frozen=True)
class Geometry:
    """The slice geometry of a profile's acquisition (axial), in millimetres."""

    matrix: int
    pixel_mm: float
    slice_thickness_mm: float
    slice_spacing_mm: float
    source: str = ""
    estimate: bool = False


@dataclass(frozen=True)
class FieldProfile:
    """Bivariate Gaussian of (white matter, grey matter) SNR for one field strength/contrast."""

    name: str
    field_strength_t: float
    contrast: str
    snr_mean: tuple[float, float]
    snr_covariance: tuple[tuple[float, float], tuple[float, float]]
    source: str = ""
    estimate: bool = False
    sequence: Sequence | None = None
    geometry: Geometry | None = None
    fixed_tissue: str = "wm"
    """The tissue whose intensity the simulator keeps: the other one is rescaled to reach the
    drawn (SNR_WM, SNR_GM) pair, and the noise is set from the fixed one."""

    def draw_snr(self, rng: np.random.Generator) -> tuple[float, float]:
        """One (SNR_WM, SNR_GM) draw, clipped to at least 1 so the noise stays finite."""
        wm, gm = rng.multivariate_normal(self.snr_mean, self.snr_covariance)
        return max(float(wm), 1.0), max(float(gm), 1.0)

    def tail_snr(self, z: float = -2.0) -> tuple[float, float]:
        """A low-SNR point: the mean moved ``z`` standard deviations along the major axis."""
        cov = np.asarray(self.snr_covariance)
        vals, vecs = np.linalg.eigh(cov)
        major = vecs[:, -1] * np.sign(vecs[:, -1].sum())
        point = np.asarray(self.snr_mean) + z * np.sqrt(vals[-1]) * major
        return float(max(point[0], 1.0)), float(max(point[1], 1.0))


def registry_name(name_or_path: str | Path) -> str:
    """The registry's name of a profile (``T1-0.36T``) given by any name ``load_profile`` takes:
    a registry name stays itself, the short ``0.36T`` / ``64mT`` are T1's, and a TOML file's
    profile is named from its contrast and field strength (``T2-0.36T``, ``FLAIR-64mT``)."""
    key = str(name_or_path)
    if key in PROFILE_NAMES:
        return key
    if key in PROFILE_FILES:
        return next(name for name in PROFILE_NAMES if PROFILE_FILES[name] == PROFILE_FILES[key])
    profile = load_profile(key)
    tesla = profile.field_strength_t
    field = f"{tesla:g}T" if tesla >= 0.1 else f"{round(tesla * 1000, 3):g}mT"
    return f"{profile.contrast}-{field}"


def load_profile(name_or_path: str | Path) -> FieldProfile:
    """Load a profile by name (``T2-64mT``, or the short ``0.36T``, ``64mT``) or from a TOML
    file path."""
    key = str(name_or_path)
    if key in PROFILE_FILES:
        text = resources.files("models.profiles").joinpath(PROFILE_FILES[key]).read_text()
    else:
        text = Path(key).read_text()
    data = tomllib.loads(text)
    mean = tuple(float(v) for v in data["snr"]["mean"])
    cov = tuple(tuple(float(v) for v in row) for row in data["snr"]["covariance"])
    if len(mean) != 2 or len(cov) != 2 or any(len(r) != 2 for r in cov):
        raise ValueError(f"profile {key}: snr.mean must have 2 and snr.covariance 2x2 entries")
    sequence = None
    if "sequence" in data:
        q = data["sequence"]
        sequence = Sequence(
            kind=q["kind"],
            tr_ms=float(q["tr_ms"]),
            te_ms=float(q["te_ms"]),
            ti_ms=float(q["ti_ms"]) if "ti_ms" in q else None,
            flip_deg=float(q.get("flip_deg", 90.0)),
            source=q.get("source", ""),
            estimate=bool(q.get("estimate", False)),
        )
    geometry = None
    if "geometry" in data:
        g = data["geometry"]
        geometry = Geometry(
            matrix=int(g["matrix"]),
            pixel_mm=float(g["pixel_mm"]),
            slice_thickness_mm=float(g["slice_thickness_mm"]),
            slice_spacing_mm=float(g["slice_spacing_mm"]),
            source=g.get("source", ""),
            estimate=bool(g.get("estimate", False)),
        )
    fixed = data.get("simulator", {}).get("fixed_tissue", "wm")
    if fixed not in FIXED_TISSUES:
        raise ValueError(f"profile {key}: simulator.fixed_tissue must be one of {FIXED_TISSUES}")
    return FieldProfile(
        name=data["name"],
        field_strength_t=float(data["field_strength_t"]),
        contrast=data.get("contrast", "T1"),
        snr_mean=mean,  # type: ignore[arg-type]
        snr_covariance=cov,  # type: ignore[arg-type]
        source=data.get("source", ""),
        estimate=bool(data.get("estimate", False)),
        sequence=sequence,
        geometry=geometry,
        fixed_tissue=fixed,
    )
