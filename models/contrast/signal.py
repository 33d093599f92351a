"""Steady-state signal equations of the sequences low-field scanners run.

Why closed forms and not a Bloch simulation: the simulator only needs each tissue's mean
signal for one sequence (tissue maps carry the anatomy), and these are the textbook
expressions every protocol-planning sheet uses. The echo train of fast spin echo is folded into
its effective TE (the echo at the centre of k-space), which is what sets its contrast.

- spin echo (SE, FSE):       S = PD (1 - exp(-TR/T1)) exp(-TE/T2)
- inversion recovery (IR, FLAIR, STIR; magnitude):
                             S = PD |1 - 2 exp(-TI/T1) + exp(-TR/T1)| exp(-TE/T2)
- spoiled gradient echo:     S = PD sin(a) (1 - E1) / (1 - cos(a) E1) exp(-TE/T2*),
                             E1 = exp(-TR/T1); T2 stands in for T2* (no T2* at these fields
                             is tabulated; at TE of a few ms the difference is small).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

KINDS = ("spin-echo", "inversion-recovery", "gradient-echo")


@dataclass(frozen=True)
class Sequence:
    """What sets a sequence's contrast: its kind and TR, TE, TI (ms), flip angle (degrees)."""

    kind: str
    tr_ms: float
    te_ms: float
    ti_ms: float | None = None
    flip_deg: float = 90.0
    source: str = ""
    estimate: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"sequence kind must be one of {KINDS}, not {self.kind!r}")
        if self.kind == "inversion-recovery" and self.ti_ms is None:
            raise ValueError("an inversion-recovery sequence needs ti_ms")
        if self.tr_ms <= 0 or self.te_ms < 0:
            raise ValueError("TR must be positive and TE non-negative")


def signal(sequence: Sequence, pd: float, t1_ms: float, t2_ms: float) -> float:
    """The steady-state magnitude of one tissue (PD units) under ``sequence``."""
    e1 = math.exp(-sequence.tr_ms / t1_ms)
    e2 = math.exp(-sequence.te_ms / t2_ms)
    if sequence.kind == "spin-echo":
        return pd * (1.0 - e1) * e2
    if sequence.kind == "inversion-recovery":
        ti = float(sequence.ti_ms)  # type: ignore[arg-type]
        return pd * abs(1.0 - 2.0 * math.exp(-ti / t1_ms) + e1) * e2
    a = math.radians(sequence.flip_deg)
    return pd * math.sin(a) * (1.0 - e1) / (1.0 - math.cos(a) * e1) * e2


def null_inversion_time(t1_ms: float, tr_ms: float) -> float:
    """The TI that nulls a tissue of ``t1_ms`` at repetition time ``tr_ms`` (FLAIR: CSF):
    solves 1 - 2 exp(-TI/T1) + exp(-TR/T1) = 0."""
    return t1_ms * math.log(2.0 / (1.0 + math.exp(-tr_ms / t1_ms)))
