"""Field-strength profiles: the low-field SNR distribution the simulator draws from.

Profiles live in data files (``models/profiles/*.toml``) so a new scanner can be described
without touching code; each file says where its numbers come from and whether they are an
estimate.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

PROFILE_FILES = {"0.36T": "t1_0.36T.toml", "64mT": "t1_64mT.toml"}


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


def load_profile(name_or_path: str | Path) -> FieldProfile:
    """Load a profile by short name (``0.36T``, ``64mT``) or from a TOML file path."""
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
    return FieldProfile(
        name=data["name"],
        field_strength_t=float(data["field_strength_t"]),
        contrast=data.get("contrast", "T1"),
        snr_mean=mean,  # type: ignore[arg-type]
        snr_covariance=cov,  # type: ignore[arg-type]
        source=data.get("source", ""),
        estimate=bool(data.get("estimate", False)),
    )
