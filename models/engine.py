"""The contract between the pipeline and anything that super-resolves a volume through-plane.

The pipeline (``pipeline.enhance``) owns geometry: it reorients a series so that the slice axis
is axis 0 of a plain float32 array, normalises intensities, and afterwards puts the result back
on a patient grid. An engine only sees arrays, which keeps ``models`` free of DICOM and lets the
classical B-spline baseline and trained networks be swapped by name.

Grid convention (shared by every engine, so outputs are comparable voxel for voxel): an input of
``n`` slices with centre-to-centre spacing ``s`` becomes ``n * k`` slices of spacing ``s / k``;
output slice ``i * k + j`` (``j = 0 .. k-1``) lies at ``z_i + (j - (k - 1) / 2) * s / k``, i.e.
each acquired slice is replaced by ``k`` thin slices centred on it, as in Lin et al. (2019), where
a 32/k-slice input patch maps to a 32-slice output patch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class EngineInfo:
    """What provenance needs to name the engine exactly."""

    name: str
    version: str
    weights_sha256: str | None = None
    description: str = ""
    learned: bool = True
    """Whether a learned (AI) model made the output: the derived series then carries the AI
    label. ``False`` for classical interpolation (``bspline``), which is labelled as such. True
    unless an engine says otherwise, so an engine that does not say is never passed off as
    plain interpolation."""
    unsupervised: bool = False
    """Whether the model was fitted to the series it enhances alone, with no training data
    (``inr``): provenance then says so, since no other data stands behind the output."""


@dataclass
class EngineResult:
    """The upsampled volume (slice axis 0) and what the engine can say about its trust."""

    volume: np.ndarray
    consistency_psnr_db: float | None = None
    notes: dict[str, object] = field(default_factory=dict)


@runtime_checkable
class ThroughPlaneEngine(Protocol):
    """Anything that turns ``n`` thick slices into ``n * k`` thin ones."""

    @property
    def info(self) -> EngineInfo: ...

    @property
    def supported_factors(self) -> tuple[int, ...]: ...

    def upsample(
        self,
        volume: np.ndarray,
        factor: int,
        slice_thickness_ratio: float = 1.0,
    ) -> EngineResult:
        """Upsample ``volume`` (float32, shape (n, rows, cols), normalised) by ``factor``.

        ``slice_thickness_ratio`` is slice thickness / slice spacing (below 1 when there are gaps);
        engines that model the acquisition (data consistency) use it, others may ignore it.
        An engine may also take an optional keyword ``spacing_mm`` (slice, row, column spacing
        in mm); the pipeline passes it only to engines whose ``upsample`` names it.
        """
        ...


def low_field_mr(profile: Mapping[str, object]) -> bool:
    """MR below 1 T, or of unknown field (many low-field exports omit it): what every engine
    of this project was built for; ``profile`` keys as in ``pipeline.engines.Profile``."""
    if str(profile.get("Modality", "MR")).upper() != "MR":
        return False
    field_t = profile.get("MagneticFieldStrength")
    try:
        return field_t in (None, "") or float(field_t) < 1.0  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
