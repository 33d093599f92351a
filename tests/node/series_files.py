"""Low-field series written to disk for the network tests (built from nilearn's MNI152 brain)."""

from __future__ import annotations

from pathlib import Path

from pipeline.sample import Acquisition, build_series, write_series


def write_lowfield_series(
    brain,  # type: ignore[no-untyped-def]
    folder: Path,
    seed: int,
    announce_count: bool = True,
    rows: int = 256,
    **overrides: object,
) -> list[Path]:
    """Write an axial 0.36 T T1 series of 30 thick slices with gaps; ``seed`` makes new UIDs."""
    acquisition = Acquisition(rows=rows, columns=rows, seed=seed, **overrides)  # type: ignore[arg-type]
    datasets = build_series(acquisition, brain)
    if not announce_count:
        for ds in datasets:
            del ds.ImagesInAcquisition
    return write_series(datasets, folder)
