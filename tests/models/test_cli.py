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


def test_train_saves_where_it_is_on_sigterm(tmp_path: Path) -> None:
    """Training runs for hours in the background across sessions: a SIGTERM (``kill``,
    systemd, the end of a session) must leave model.pt and a resumable checkpoint for the step
    reached, not lose everything since the last periodic checkpoint."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import torch

    config = tmp_path / "tiny.toml"
    config.write_text(
        "[model]\nfactor = 4\nbase_filters = 2\nlevels = 3\n"
        '[data]\ntrain_brains = ["mni152-2009a"]\nval_brains = []\ndraws_per_brain = 1\n'
        "patches_per_draw = 8\npatch_in_plane = 32\nslice_axes = [2]\n"
        "[train]\nsteps = 100000\nbatch_size = 2\nlog_every = 2\ncheckpoint_every = 100000\n"
        "val_every = 100000\n"
    )
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "dicomnode.cli", "train", str(config), "--out", str(run)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 240
        log = run / "train.log"
        while time.monotonic() < deadline and "step 4 " not in (
            log.read_text() if log.exists() else ""
        ):
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 143, output
    assert "stopped by SIGTERM" in output
    saved = torch.load(run / "model.pt", weights_only=False)
    assert saved["history"]["steps_done"] >= 4
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=False)
    assert checkpoint["step"] == saved["history"]["steps_done"]
