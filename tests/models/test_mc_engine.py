"""The contrast-agnostic engine ``iqt-mc``: a random-contrast run is released under its own name
with the profiles it serves, loads through the one IQTEngine, runs, says what ran; with none
released (as shipped today) it accepts nothing and the node falls back as before."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.iqt_engine import IQTEngine, accepts_mc_profile, accepts_profile
from models.release import (
    MC_MODEL_NAME,
    MODEL_NAME,
    file_name,
    load_weights,
    read_manifest,
    release_run,
    released_factors,
    released_profiles,
)
from models.train import train
from tests.models.conftest import phantom
from tests.models.mc_release import PROFILES, mc_config, tiny_mc_release


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    return tiny_mc_release(tmp_path_factory.mktemp("mc") / "weights")


def test_release_names_files_and_lists_profiles(release) -> None:  # type: ignore[no-untyped-def]
    manifest = read_manifest(release)["models"]
    assert sorted(manifest) == [file_name(k, "0.1.0", MC_MODEL_NAME) for k in (4, 8)]
    assert sorted(manifest) == ["iqt-mc-0.1.0-k4.safetensors", "iqt-mc-0.1.0-k8.safetensors"]
    for name, entry in manifest.items():
        assert entry["name"] == MC_MODEL_NAME and entry["profiles"] == PROFILES
        assert "profile" not in entry and entry["input_normalisation"] == "core-median"
        assert entry["steps"] == 3
        card = (release / name).with_suffix(".md").read_text()
        assert card.startswith(f"# Model card: iqt-mc k={entry['factor']} (version 0.1.0)")
        assert "T2-0.36T, T2-64mT, FLAIR-64mT" in card and entry["sha256"] in card
        network = load_weights(release / name, entry["sha256"])
        assert network.profiles == tuple(PROFILES)
        assert network.input_normalisation == "core-median"
    # the T1 engine's view of the same folder: nothing of its own is released there
    assert released_factors(release) == () and released_factors(release, MC_MODEL_NAME) == (4, 8)
    assert released_profiles(release, MC_MODEL_NAME) == tuple(sorted(PROFILES))


def test_engine_runs_and_says_which_weights(release) -> None:  # type: ignore[no-untyped-def]
    engine = IQTEngine.from_release(release, name=MC_MODEL_NAME)
    assert engine.info.name == MC_MODEL_NAME and engine.info.version == "0.1.0"
    assert engine.supported_factors == (4, 8) and engine.profiles == tuple(sorted(PROFILES))
    assert "contrast-agnostic" in engine.info.description and "T2-64mT" in engine.info.description
    volume = np.random.default_rng(0).random((6, 40, 36)).astype(np.float32) * 300.0
    result = engine.upsample(volume, 4, 0.8, spacing_mm=(5.0, 1.5, 1.5))
    assert result.volume.shape == (24, 40, 36) and np.isfinite(result.volume).all()
    entry = read_manifest(release)["models"]["iqt-mc-0.1.0-k4.safetensors"]
    assert result.notes["weights_file"] == "iqt-mc-0.1.0-k4.safetensors"
    assert result.notes["weights_file_sha256"] == entry["sha256"]
    assert result.notes["input_normalisation"] == "core-median"
    assert result.notes["trained_profiles"] == sorted(PROFILES)
    with pytest.raises(FileNotFoundError, match="no released iqt-t1"):
        IQTEngine.from_release(release)


def test_accepts_only_the_profiles_it_was_released_for(release) -> None:  # type: ignore[no-untyped-def]
    t2 = {"Modality": "MR", "MagneticFieldStrength": 0.36, "profile": "T2-0.36T"}
    assert accepts_mc_profile(t2, release)
    assert accepts_mc_profile({**t2, "profile": "FLAIR-64mT"}, release)
    assert not accepts_mc_profile({**t2, "profile": "FLAIR-0.36T"}, release)  # not trained
    assert not accepts_mc_profile({**t2, "profile": "T1-0.36T"}, release)  # iqt-t1's
    assert not accepts_mc_profile({**t2, "profile": None}, release)
    assert not accepts_mc_profile({**t2, "MagneticFieldStrength": 1.5}, release)
    assert not accepts_mc_profile({**t2, "Modality": "CT"}, release)
    # the package's own release (0.1.0) serves the five profiles, never T1-0.36T
    assert accepts_mc_profile(t2) and accepts_mc_profile({**t2, "profile": "FLAIR-0.36T"})
    assert not accepts_mc_profile({**t2, "profile": "T1-0.36T"})
    assert not accepts_profile({**t2, "SeriesDescription": "T2 AX"})


def test_runs_are_released_under_the_name_of_their_kind(tmp_path) -> None:  # type: ignore[no-untyped-def]
    t1 = mc_config(4, steps=1)
    t1.data.contrast, t1.data.profiles, t1.data.normalisation = "t1", [], "wm-peak"
    for name, cfg in (("mc", mc_config(4, steps=1)), ("t1", t1)):
        empty = (torch.empty(0), torch.empty(0))
        train(cfg, tmp_path / name, brains=[phantom()], val=empty, progress=False)
    with pytest.raises(ValueError, match="--name iqt-mc"):
        release_run(tmp_path / "mc", tmp_path / "out", name=MODEL_NAME)
    with pytest.raises(ValueError, match="random-contrast runs"):
        release_run(tmp_path / "t1", tmp_path / "out", name=MC_MODEL_NAME)
    path = release_run(tmp_path / "t1", tmp_path / "out", version="9.0.0")
    entry = json.loads((tmp_path / "out" / "manifest.json").read_text())["models"][path.name]
    assert path.name == "iqt-t1-9.0.0-k4.safetensors"
    assert entry["profile"] == "T1-0.36T" and "profiles" not in entry
