"""Released weights: sha256 is checked on load; the engine built from them honours the contract."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.aniso_unet import AnisoUNet, UNetConfig
from models.engine import ThroughPlaneEngine
from models.iqt_engine import IQTEngine
from models.release import (
    WeightsIntegrityError,
    file_name,
    load_released,
    load_weights,
    read_manifest,
    save_weights,
    sha256_file,
    weights_dir,
)
from models.smore import DetailSettings


def _tiny_release(directory: Path, factors: tuple[int, ...] = (4, 8)) -> None:
    manifest: dict = {"models": {}}
    for k in factors:
        torch.manual_seed(k)
        net = AnisoUNet(UNetConfig(factor=k, base_filters=2, residual_input=True))
        sha = save_weights(net, directory / file_name(k), {"name": "iqt-t1", "version": "test"})
        manifest["models"][file_name(k)] = {"factor": k, "version": "test", "sha256": sha}
        if k == 8:
            manifest["models"][file_name(k)]["tile"] = {"slices": 4, "rows": 64, "cols": 48}
    (directory / "manifest.json").write_text(json.dumps(manifest))


def test_roundtrip_and_tamper_detection(tmp_path: Path) -> None:
    _tiny_release(tmp_path, (4,))
    net, entry = load_released(4, tmp_path)
    assert net.config.factor == 4 and entry["sha256"] == sha256_file(tmp_path / file_name(4))
    data = bytearray((tmp_path / file_name(4)).read_bytes())
    data[-3] ^= 0xFF
    (tmp_path / file_name(4)).write_bytes(bytes(data))
    with pytest.raises(WeightsIntegrityError, match="sha256"):
        load_released(4, tmp_path)
    with pytest.raises(FileNotFoundError):
        load_released(8, tmp_path)


def test_engine_contract_on_tiny_release(tmp_path: Path) -> None:
    _tiny_release(tmp_path)
    engine = IQTEngine.from_release(tmp_path)
    assert isinstance(engine, ThroughPlaneEngine)
    assert engine.supported_factors == (4, 8)
    assert (engine.tiles[8].rows, engine.tiles[8].cols, engine.tiles[4].rows) == (64, 48, 160)
    assert engine.info.name == "iqt-t1" and len(engine.info.weights_sha256 or "") == 64
    vol = np.random.default_rng(0).random((6, 40, 36)).astype(np.float32) * 500.0
    res = engine.upsample(vol, 8)
    assert res.volume.shape == (48, 40, 36) and res.volume.dtype == np.float32
    assert res.consistency_psnr_db is not None and np.isfinite(res.consistency_psnr_db)
    assert (
        res.notes["weights_file_sha256"]
        == read_manifest(tmp_path)["models"][file_name(8)]["sha256"]
    )
    # Output is on the caller's scale: a zero-initialised residual head gives back the linear
    # interpolation of the input, whose slice means match the input's.
    assert res.volume.mean() == pytest.approx(vol.mean(), rel=0.02)
    with pytest.raises(ValueError, match="factors"):
        engine.upsample(vol, 2)


def test_shipped_weights_verify_and_load() -> None:
    manifest = read_manifest()
    if not manifest["models"]:
        pytest.skip("no weights released yet")
    assert {e["factor"] for e in manifest["models"].values()} >= {4, 8}
    for name, entry in manifest["models"].items():
        path = weights_dir() / name
        # float16 conv weights: 8.6 MB for the 12-filter networks of 0.4.0 (4.3 M parameters);
        # the paper's 16 filters would need about 15 MB, a reason to think before committing them
        assert path.stat().st_size < 10_000_000, "released weight files must stay small"
        assert sha256_file(path) == entry["sha256"]
        net = load_weights(path, entry["sha256"])
        assert net.config.factor == entry["factor"]
        assert (weights_dir() / name.replace(".safetensors", ".md")).exists()


def test_accepts_low_field_t1_only() -> None:
    from models.iqt_engine import accepts_profile

    assert accepts_profile(
        {"Modality": "MR", "MagneticFieldStrength": 0.36, "SeriesDescription": "T1 SE axial"}
    )
    assert accepts_profile({"Modality": "MR", "SeriesDescription": "t1_ax"})
    assert not accepts_profile(
        {"Modality": "MR", "MagneticFieldStrength": 1.5, "SeriesDescription": "T1"}
    )
    assert not accepts_profile(
        {"Modality": "MR", "MagneticFieldStrength": 0.064, "SeriesDescription": "T2 FLAIR"}
    )
    assert not accepts_profile({"Modality": "CT", "SeriesDescription": "T1"})


def test_release_run_writes_file_manifest_and_card(tmp_path: Path, phantom_brain) -> None:  # type: ignore[no-untyped-def]
    from models.release import release_run
    from models.train import DataConfig, OptimConfig, TrainConfig, train

    cfg = TrainConfig(
        model=UNetConfig(factor=8, base_filters=2, residual_input=True),
        data=DataConfig(train_brains=[], val_brains=[], draws_per_brain=1, patches_per_draw=8),
        train=OptimConfig(steps=2, batch_size=2, warmup_steps=1),
    )
    train(
        cfg,
        tmp_path / "run",
        brains=[phantom_brain],
        val=(torch.empty(0), torch.empty(0)),
        progress=False,
    )
    out = tmp_path / "weights"
    path = release_run(tmp_path / "run", out, "## Evaluation\n\ntable here\n", "test-cpu")
    entry = read_manifest(out)["models"][path.name]
    assert entry["sha256"] == sha256_file(path) and entry["steps"] == 2
    assert entry["profile"] == "T1-0.36T"  # the config's short "0.36T", by its registry name
    card = path.with_suffix(".md").read_text()
    assert entry["sha256"] in card and "table here" in card and "test-cpu" in card
    engine = IQTEngine.from_release(out)
    assert engine.supported_factors == (8,)

    # A config may name its profile either way; the manifest always records the registry's
    # name (it was once "T1-T1-0.36T" for a config saying "T1-0.36T").
    checkpoint = torch.load(tmp_path / "run" / "model.pt", weights_only=False)
    for given, recorded in [
        ("0.36T", "T1-0.36T"),
        ("T1-0.36T", "T1-0.36T"),
        ("64mT", "T1-64mT"),
        ("T1-64mT", "T1-64mT"),
    ]:
        run = tmp_path / f"run-{given}"
        run.mkdir()
        checkpoint["config"]["data"]["profile"] = given
        torch.save(checkpoint, run / "model.pt")
        released = release_run(run, tmp_path / f"weights-{given}", "", "test-cpu")
        assert read_manifest(released.parent)["models"][released.name]["profile"] == recorded


def test_release_of_the_weight_average(tmp_path: Path, phantom_brain) -> None:  # type: ignore[no-untyped-def]
    """``weights="average"`` releases the run's moving average, says so in the manifest and
    card, and is refused for a run that kept none."""
    from models.release import load_weights, release_again, release_run
    from models.train import DataConfig, OptimConfig, TrainConfig, train

    cfg = TrainConfig(
        model=UNetConfig(factor=4, base_filters=2, levels=4, residual_input=True),
        data=DataConfig(train_brains=[], val_brains=[], draws_per_brain=1, patches_per_draw=8),
        train=OptimConfig(steps=3, batch_size=2, warmup_steps=1, ema_decay=0.9),
    )
    empty = (torch.empty(0), torch.empty(0))
    train(cfg, tmp_path / "run", brains=[phantom_brain], val=empty, progress=False)
    saved = torch.load(tmp_path / "run" / "model.pt", weights_only=False)
    path = release_run(
        tmp_path / "run", tmp_path / "w", "", "test-cpu", version="1.0.0", weights="average"
    )
    released = load_weights(path, None).state_dict()
    name = next(k for k in saved["ema"] if saved["ema"][k].dtype.is_floating_point)
    assert torch.allclose(released[name].float(), saved["ema"][name].float(), atol=1e-2)
    assert read_manifest(path.parent)["models"][path.name]["weights"] == "average"
    card = path.with_suffix(".md").read_text()
    assert "moving average of the training weights (decay 0.9)" in card
    # A re-release of an averaged release keeps its card's figure (of the averaged weights).
    path.with_suffix(".md").write_text(card.replace("final nan dB", "final 21.50 dB", 1))
    (again,) = release_again("1.0.0", "1.0.1", path.parent, flip_ensemble=2)
    again_card = again.with_suffix(".md").read_text()
    assert "final 21.50 dB vs linear interpolation" in again_card
    assert "moving average of the training weights (decay 0.9)" in again_card

    plain = TrainConfig(cfg.model, cfg.data, OptimConfig(steps=2, batch_size=2, warmup_steps=1))
    train(plain, tmp_path / "plain", brains=[phantom_brain], val=empty, progress=False)
    with pytest.raises(ValueError, match="no weight average"):
        release_run(tmp_path / "plain", tmp_path / "w2", "", "test-cpu", weights="average")


def test_release_bytes_are_reproducible(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = AnisoUNet(UNetConfig(factor=4, base_filters=2))
    meta = {"name": "iqt-t1", "version": "test", "extra": "x"}
    assert save_weights(net, tmp_path / "a.safetensors", meta) == save_weights(
        net, tmp_path / "b.safetensors", meta
    )


def test_every_profile_has_one_registry_name() -> None:
    """What ``release_run`` records as a T1 entry's ``profile``: the registry's name whichever
    way the configuration named the profile (registry name, short name or TOML file)."""
    from importlib import resources

    from models.profile import PROFILE_FILES, PROFILE_NAMES, load_profile, registry_name

    assert [registry_name(n) for n in PROFILE_NAMES] == list(PROFILE_NAMES)
    assert (registry_name("0.36T"), registry_name("64mT")) == ("T1-0.36T", "T1-64mT")
    folder = Path(str(resources.files("models.profiles")))
    for name in PROFILE_NAMES:
        assert registry_name(folder / PROFILE_FILES[name]) == name
        assert load_profile(registry_name(name)) == load_profile(name)


def test_release_again_keeps_the_weights_and_changes_only_inference(
    tmp_path: Path,
    phantom_brain,  # type: ignore[no-untyped-def]
) -> None:
    """A re-release is a new file and version with the source's weights, history and card
    figures, and the new inference settings in the file, the manifest and the card."""
    from models.release import release_again, release_run
    from models.train import DataConfig, OptimConfig, TrainConfig, train

    cfg = TrainConfig(
        model=UNetConfig(factor=4, base_filters=2, residual_input=True),
        data=DataConfig(train_brains=[], val_brains=[], draws_per_brain=1, patches_per_draw=8),
        train=OptimConfig(steps=2, batch_size=2, warmup_steps=1),
    )
    train(cfg, tmp_path / "run", brains=[phantom_brain], val=(torch.empty(0), torch.empty(0)))
    out = tmp_path / "weights"
    source = release_run(tmp_path / "run", out, "", "test-cpu", version="1.0.0")
    card_path = source.with_suffix(".md")  # a run with validation figures, as real ones have
    card_path.write_text(card_path.read_text().replace("final nan dB", "final 20.33 dB", 1))
    card_path.write_text(card_path.read_text().replace("\nnan dB (PSNR", "\n17.87 dB (PSNR", 1))
    manifest = read_manifest(out)
    manifest["models"][source.name]["metrics"] = {"mean_psnr_gain_db": 1.0}
    (out / "manifest.json").write_text(json.dumps(manifest))
    (again,) = release_again(
        "1.0.0",
        "1.0.1",
        out,
        flip_ensemble=4,
        consistency_weight=0.5,
        detail_weight=0.3,
        output_shading_degree=1,
    )
    manifest = read_manifest(out)["models"]
    old, new = manifest[source.name], manifest[again.name]
    assert new["version"] == "1.0.1" and new["released_from"] == "1.0.0"
    assert new["flip_ensemble"] == 4 and new["consistency_weight"] == 0.5
    assert new["detail_weight"] == 0.3 and "detail_weight" not in old
    assert new["output_shading_degree"] == 1 and "output_shading_degree" not in old
    assert "metrics" in old and "metrics" not in new  # measured with the old settings
    assert new["sha256"] == sha256_file(again) != old["sha256"]
    assert (new["steps"], new["training_seconds"], new["config"]) == (
        old["steps"],
        old["training_seconds"],
        old["config"],
    )
    a, b = load_weights(source, old["sha256"]), load_weights(again, new["sha256"])
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key])
    assert (b.flip_ensemble, b.consistency_weight, b.detail_weight) == (4, 0.5, 0.3)
    assert (a.flip_ensemble, a.detail_weight) == (1, 0.0)
    assert (a.output_shading_degree, b.output_shading_degree) == (0, 1)
    card = again.with_suffix(".md").read_text()
    assert "mean of 4 mirrored predictions" in card and old["sha256"] in card
    assert "blended with weight 0.3" in card
    assert "a degree-1 tissue fit of the enhanced volume divided out" in card
    assert "test-cpu" in card and "final 20.33 dB vs linear interpolation\n17.87 dB" in card
    # the newest: the re-release; a short per-series detail fit keeps the test quick
    engine = IQTEngine.from_release(out, detail=DetailSettings(max_steps=3, patch=16))
    assert engine.info.version == "1.0.1"
    vol = np.random.default_rng(0).random((6, 40, 36)).astype(np.float32) * 500.0
    notes = engine.upsample(vol, 4).notes
    assert notes["flip_ensemble"] == 4 and notes["detail_weight"] == 0.3
    assert notes["output_shading_degree"] == 1  # what pipeline.run is asked to do
    assert notes["detail_training"]["steps"] == 3  # type: ignore[index]
    # a series with no head in it has nothing to learn detail from: the prediction alone runs
    empty = engine.upsample(np.zeros((6, 40, 36), np.float32), 4)
    assert "no in-plane slice" in str(empty.notes["detail_skipped"])
    assert "detail_training" not in empty.notes and empty.volume.shape == (24, 40, 36)
    with pytest.raises(FileNotFoundError, match="no released"):
        release_again("9.9.9", "9.9.10", out)


def test_release_again_carries_one_factor_into_a_version_whose_other_factor_changed(
    tmp_path: Path,
    phantom_brain,  # type: ignore[no-untyped-def]
) -> None:
    """The engine loads one version for all factors, so a version that retrains only k = 8
    carries k = 4's network over unchanged (``--again OLD --factors 4``)."""
    from models.release import load_weights, release_again, release_run
    from models.train import DataConfig, OptimConfig, TrainConfig, train

    out = tmp_path / "weights"
    for k, version in ((4, "1.0.0"), (8, "1.0.0"), (8, "1.1.0")):
        cfg = TrainConfig(
            model=UNetConfig(factor=k, base_filters=2, residual_input=True),
            data=DataConfig(train_brains=[], val_brains=[], draws_per_brain=1, patches_per_draw=8),
            train=OptimConfig(steps=2, batch_size=2, warmup_steps=1),
        )
        run = tmp_path / f"run-{k}-{version}"
        train(cfg, run, brains=[phantom_brain], val=(torch.empty(0), torch.empty(0)))
        release_run(run, out, "", "test-cpu", version=version)
    with pytest.raises(ValueError, match="different versions"):
        IQTEngine.from_release(out)
    (carried,) = release_again("1.0.0", "1.1.0", out, factors=(4,))
    manifest = read_manifest(out)["models"]
    new, old = manifest[carried.name], manifest["iqt-t1-1.0.0-k4.safetensors"]
    assert new["factor"] == 4 and new["released_from"] == "1.0.0"
    assert new.get("consistency_weight", 0.0) == old.get("consistency_weight", 0.0)
    assert "iqt-t1-1.1.0-k8.safetensors" in manifest  # the retrained factor is left alone
    a = load_weights(out / "iqt-t1-1.0.0-k4.safetensors", old["sha256"])
    b = load_weights(carried, new["sha256"])
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key])
    assert "unchanged" in carried.with_suffix(".md").read_text()
    engine = IQTEngine.from_release(out)
    assert engine.info.version == "1.1.0" and engine.supported_factors == (4, 8)
