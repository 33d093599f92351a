"""``dicomnode simulate`` to a DICOM series: profile geometry, contrast and sequence, marked as
simulated, accepted by dciodvfy, routed to its profile (pipeline.lowfield)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicomnode.receive.profile_rules import pick_profile
from pipeline.io import read_series
from pipeline.sample import Acquisition, build_series, write_series
from pipeline.volume import read_volume
from tests.node.helpers import BIN


def _dciodvfy_errors(path: Path) -> list[str]:
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def _simulate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN), "simulate", *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def from_brain(tmp_path_factory) -> list[pydicom.Dataset]:
    out = tmp_path_factory.mktemp("sim") / "t2-64mT"
    run = _simulate(str(out), "--brain", "mni152-2009a", "--profile", "T2-64mT", "--seed", "3")
    assert run.returncode == 0, run.stderr
    assert "simulated 64mT-T2" in run.stdout
    return read_series([out])


def test_simulated_series_passes_dciodvfy(from_brain, tmp_path) -> None:
    path = tmp_path / "one.dcm"
    from_brain[len(from_brain) // 2].save_as(path)
    assert _dciodvfy_errors(path) == []


def test_geometry_sequence_and_marking_follow_the_profile(from_brain) -> None:
    first = from_brain[0]
    assert [float(v) for v in first.PixelSpacing] == [1.5, 1.5]
    assert float(first.SliceThickness) == 5.0
    assert float(first.MagneticFieldStrength) == pytest.approx(0.064)
    assert (float(first.RepetitionTime), float(first.EchoTime)) == (2200.0, 180.0)
    assert first.ImageComments.startswith("SIMULATED")
    assert "SIMULATED" in first.SeriesDescription and "SIMULATED" in str(first.PatientName)
    volume = read_volume(from_brain)
    assert volume.slice_spacing == pytest.approx(5.0, abs=1e-3)
    # T2 contrast: ventricles (CSF) brighter than the white matter around them
    array = np.stack([ds.pixel_array for ds in from_brain]).astype(float)
    brain = array[array > 0.2 * array.max()]
    assert np.percentile(brain, 99) > 2.5 * np.median(brain)
    assert pick_profile(first)[0] == "T2-64mT"


def test_dicom_input_keeps_the_source_patient_space(tmp_path) -> None:
    """A high-field DICOM series in, a FLAIR-0.36T series out, on the source's frame."""
    source = Acquisition(
        rows=96,
        columns=96,
        pixel_spacing=2.0,
        slices=70,
        slice_thickness=2.0,
        slice_spacing=2.0,
        field_strength=1.5,
        series_description="T1 3D HF",
        snr=200.0,
    )
    datasets = build_series(source)
    write_series(datasets, tmp_path / "hf")
    out = tmp_path / "flair"
    run = _simulate(str(out), "--input", str(tmp_path / "hf"), "--profile", "FLAIR-0.36T")
    assert run.returncode == 0, run.stderr
    simulated = read_series([out])
    first = simulated[0]
    assert first.FrameOfReferenceUID == datasets[0].FrameOfReferenceUID
    assert float(first.InversionTime) == 2130.0 and first.ScanningSequence == "IR"
    assert read_volume(simulated).slice_spacing == pytest.approx(6.0, abs=1e-3)
    z_source = [float(ds.ImagePositionPatient[2]) for ds in datasets]
    z_sim = [float(ds.ImagePositionPatient[2]) for ds in simulated]
    assert min(z_source) - 1 <= min(z_sim) and max(z_sim) <= max(z_source) + 1
    assert pick_profile(first)[0] == "FLAIR-0.36T"
    path = tmp_path / "one.dcm"
    simulated[len(simulated) // 2].save_as(path)
    assert _dciodvfy_errors(path) == []
