"""Reading the instances of one series from files and folders, and writing a derived series.

Used by ``dicomnode enhance`` (the node itself hands ``pipeline.run`` datasets from its spool).
Non-DICOM files in a folder are skipped, so a folder copied off a CD with a DICOMDIR and readme
works; a second series in the input is refused rather than guessed at.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from pipeline.errors import InputError

log = logging.getLogger(__name__)


def find_files(inputs: Sequence[Path | str]) -> list[Path]:
    """Files named directly, plus every file under folders named (recursively, sorted)."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files.extend(sorted(p for p in item.rglob("*") if p.is_file()))
        elif item.is_file():
            files.append(item)
        else:
            raise InputError("not-found", f"no such file or folder: {item}")
    return files


def read_series(inputs: Sequence[Path | str]) -> list[Dataset]:
    """The DICOM image instances found in ``inputs``; exactly one series is accepted."""
    datasets = []
    for path in find_files(inputs):
        if path.name.upper() == "DICOMDIR":
            continue
        try:
            ds = pydicom.dcmread(path)
        except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
            log.debug("skipping %s: not DICOM (%s)", path.name, exc)
            continue
        if "PixelData" in ds:
            datasets.append(ds)
    if not datasets:
        raise InputError("no-images", "no DICOM image instances found in the input")
    series = sorted({str(ds.get("SeriesInstanceUID", "")) for ds in datasets})
    if len(series) > 1:
        raise InputError(
            "multiple-series",
            f"the input holds {len(series)} series; give the files of one series",
            series,
        )
    return datasets


def write_datasets(datasets: Sequence[Dataset], folder: Path | str) -> list[Path]:
    """Write instances as Part 10 files named by instance number (IM0001.dcm, ...)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = folder / f"IM{int(ds.InstanceNumber):04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
