"""Render a T1, T2, FLAIR or PD image from tissue maps at a low field.

Each voxel's signal is the volume-weighted sum of its tissues' signals,
``sum_t p_t S_t(sequence, field)``: partial volume at a tissue border mixes the signals, as
it does in a real voxel. Voxels that no map covers (air, skull, scalp: the shipped brains
have no maps for them) get the remainder ``1 - sum_t p_t`` times ``other_signal`` (default 0),
so rendered heads are skull-stripped. The relaxation times come from ``relaxation.toml``,
each with its source.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np

from models.contrast.signal import Sequence, signal
from models.simulate import TissueMaps

TISSUES = ("gm", "wm", "csf")


@dataclass(frozen=True)
class Relaxation:
    """One tissue at one field: T1, T2 (ms), proton density, and where the numbers come from."""

    name: str
    field_t: float
    t1_ms: float
    t2_ms: float
    pd: float
    source: str
    estimate: bool


@lru_cache(maxsize=1)
def _table() -> dict:
    text = resources.files("models.contrast").joinpath("relaxation.toml").read_text()
    return tomllib.loads(text)


def relaxation_table() -> list[Relaxation]:
    """Every (tissue, field) entry of ``relaxation.toml``."""
    return [
        Relaxation(
            name=e["name"],
            field_t=float(e["field_t"]),
            t1_ms=float(e["t1_ms"]),
            t2_ms=float(e["t2_ms"]),
            pd=float(e["pd"]),
            source=e["source"],
            estimate=bool(e.get("estimate", False)),
        )
        for e in _table()["tissue"]
    ]


def fields() -> tuple[float, ...]:
    """The field strengths (tesla) the table covers."""
    return tuple(sorted({r.field_t for r in relaxation_table()}))


def relaxation(tissue: str, field_t: float) -> Relaxation:
    """The entry for ``tissue`` at the tabulated field nearest ``field_t`` (within 20 %)."""
    entries = [r for r in relaxation_table() if r.name == tissue]
    if not entries:
        raise ValueError(f"no relaxation times for tissue {tissue!r}")
    best = min(entries, key=lambda r: abs(np.log(r.field_t / field_t)))
    if abs(best.field_t - field_t) > 0.2 * field_t:
        raise ValueError(
            f"no relaxation times near {field_t} T (tabulated: {', '.join(map(str, fields()))})"
        )
    return best


def pd_sequence() -> Sequence:
    """The proton-density weighting of ``relaxation.toml`` ([pd_sequence])."""
    d = _table()["pd_sequence"]
    return Sequence(
        d["kind"], float(d["tr_ms"]), float(d["te_ms"]), source=d["source"], estimate=True
    )


def tissue_signals(sequence: Sequence, field_t: float) -> dict[str, float]:
    """Each tissue's signal (PD units) under ``sequence`` at ``field_t``."""
    out = {}
    for tissue in TISSUES:
        r = relaxation(tissue, field_t)
        out[tissue] = signal(sequence, r.pd, r.t1_ms, r.t2_ms)
    return out


def render(
    maps: TissueMaps, sequence: Sequence, field_t: float, *, other_signal: float = 0.0
) -> np.ndarray:
    """The image ``sum_t p_t S_t`` (float32, the maps' grid), scaled so white matter is 1.

    Scaling to white matter keeps every contrast on the scale the engines' normalisation
    (``wm-peak``) expects; the ratios between tissues are what the sequence sets.
    """
    s = tissue_signals(sequence, field_t)
    return mix(maps, s, other_signal) / np.float32(max(s["wm"], 1e-12))


def mix(maps: TissueMaps, signals: dict[str, float], other: float | np.ndarray = 0.0) -> np.ndarray:
    """``sum_t p_t S_t`` for given tissue ``signals``, plus ``(1 - sum_t p_t) other`` (a number,
    or an image on the maps' grid: the random-contrast training draws put the head's own scalp
    there, ``models.contrast.draw``)."""
    if maps.csf is None:
        raise ValueError("rendering needs a CSF map (TissueMaps.csf)")
    probabilities = {"gm": maps.gm, "wm": maps.wm, "csf": maps.csf}
    total = np.zeros(maps.gm.shape, np.float32)
    covered = np.zeros(maps.gm.shape, np.float32)
    for tissue in TISSUES:
        p = np.clip(np.asarray(probabilities[tissue], np.float32), 0.0, 1.0)
        total += p * np.float32(signals[tissue])
        covered += p
    other_value = other if isinstance(other, np.ndarray) else np.float32(other)
    total += np.clip(1.0 - covered, 0.0, 1.0) * other_value
    return total.astype(np.float32, copy=False)


def gm_wm_ratio(sequence: Sequence, field_t: float) -> float:
    """Mean GM / mean WM signal of pure tissue: the contrast a profile's SNR pair should carry."""
    s = tissue_signals(sequence, field_t)
    return s["gm"] / s["wm"]
