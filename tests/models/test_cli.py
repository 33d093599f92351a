"""The model commands are registered and ``dicomnode simulate`` writes a usable NIfTI."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from typer.testing import CliRunner

from dicomnode.cli import app

runner = CliRunner()


def test_commands_have_help() -> None:
    for cmd in ("train", "evaluate", "simulate"):
        result = runner.invoke(app, [cmd, "--help"])
        assert result.exit_code == 0, result.output


def test_simulate_writes_thick_slices(tmp_path: Path) -> None:
    out = tmp_path / "lf.nii.gz"
    result = runner.invoke(
        app, ["simulate", str(out), "--brain", "mni152-2009a", "-k", "8", "--snr", "30,25"]
    )
    assert result.exit_code == 0, result.output
    img = nib.load(out)
    assert img.shape[2] == 189 // 8
    assert img.affine[2, 2] == 8.0
    data = np.asarray(img.dataobj)
    assert np.isfinite(data).all() and data.std() > 0


def test_train_rejects_bad_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nsteps = 1\nbogus = 2\n")
    result = runner.invoke(app, ["train", str(bad), "--out", str(tmp_path / "run")])
    assert result.exit_code != 0
    assert "bogus" in result.output
