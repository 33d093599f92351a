"""Training: a tiny model's loss falls over a few steps; checkpoints resume; config checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models.aniso_unet import UNetConfig
from models.train import DataConfig, OptimConfig, TrainConfig, lr_factor, train


def _config(steps: int) -> TrainConfig:
    return TrainConfig(
        model=UNetConfig(factor=4, base_filters=2, levels=4),
        data=DataConfig(
            train_brains=[], val_brains=[], draws_per_brain=1, patches_per_draw=32, slice_axes=[2]
        ),
        train=OptimConfig(
            steps=steps,
            batch_size=4,
            lr=3e-3,
            warmup_steps=1,
            val_every=1000,
            checkpoint_every=5,
            log_every=5,
        ),
    )


def test_tiny_model_loss_falls(tmp_path, phantom_brain) -> None:  # type: ignore[no-untyped-def]
    hist = train(
        _config(30),
        tmp_path / "run",
        brains=[phantom_brain],
        val=(torch.empty(0), torch.empty(0)),
        progress=False,
    )
    loss = np.asarray(hist["loss"])
    assert len(loss) == 30
    assert loss[-5:].mean() < 0.75 * loss[:5].mean()
    for name in ("checkpoint.pt", "model.pt", "history.json", "curves.png", "train.log"):
        assert (tmp_path / "run" / name).exists()


def test_resume_continues_from_checkpoint(tmp_path, phantom_brain) -> None:  # type: ignore[no-untyped-def]
    empty = (torch.empty(0), torch.empty(0))
    train(_config(5), tmp_path, brains=[phantom_brain], val=empty, progress=False)
    hist = train(
        _config(8), tmp_path, resume=True, brains=[phantom_brain], val=empty, progress=False
    )
    assert hist["step"] == list(range(8))
    assert json.loads((tmp_path / "history.json").read_text())["steps_done"] == 8


def test_config_files_parse_and_reject_unknown_keys(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from pathlib import Path

    configs = sorted((Path(__file__).parents[2] / "models" / "configs").glob("*.toml"))
    assert len(configs) >= 4
    for path in configs:
        cfg = TrainConfig.from_toml(path)
        cfg.model.validate()
        # A brain may serve both only split by hemisphere (one half trains, the other validates).
        for name in set(cfg.data.val_brains) & set(cfg.data.train_brains):
            sides = {cfg.data.regions.get(name), cfg.data.val_regions.get(name)}
            assert sides == {"left", "right"}, f"{path.name}: {name} is not split"
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\nfactor = 4\nwidth = 3\n")
    with pytest.raises(ValueError, match="width"):
        TrainConfig.from_toml(bad)


def test_schedule_warms_up_then_decays() -> None:
    cfg = OptimConfig(steps=100, warmup_steps=10)
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(99, cfg) < 0.1


def test_init_from_starts_from_given_weights(tmp_path, phantom_brain) -> None:  # type: ignore[no-untyped-def]
    empty = (torch.empty(0), torch.empty(0))
    train(_config(3), tmp_path / "a", brains=[phantom_brain], val=empty, progress=False)
    cfg = _config(0)
    cfg.train.init_from = str(tmp_path / "a" / "model.pt")
    train(cfg, tmp_path / "b", brains=[phantom_brain], val=empty, progress=False)
    a = torch.load(tmp_path / "a" / "model.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "b" / "model.pt", weights_only=False)["model"]
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_draw_workers_feed_the_same_batches_shape(tmp_path, phantom_brain) -> None:  # type: ignore[no-untyped-def]
    """The GPU path: draws simulated in worker processes, one refill ahead."""
    from models.train import PatchStream

    cfg = _config(4)
    cfg.train.draw_workers = 2
    cfg.data.patches_per_draw = 4
    stream = PatchStream(cfg, np.random.default_rng(0), [phantom_brain])
    try:
        for _ in range(3):  # crosses a refill, so the second round comes from the pool too
            x, y, w = stream.next_batch()
            assert x.shape == (4, 1, 8, 32, 32) and y.shape == w.shape == (4, 1, 32, 32, 32)
    finally:
        stream.close()


def test_weight_average_is_kept_saved_and_resumed(tmp_path, phantom_brain) -> None:  # type: ignore[no-untyped-def]
    """``ema_decay`` keeps a moving average beside the trained weights: it lags them (so it
    differs), it is what the checkpoint resumes, and model.pt carries both."""
    from dataclasses import replace

    cfg = _config(6)
    cfg = replace(cfg, train=replace(cfg.train, ema_decay=0.5, val_every=3))
    x = torch.rand(2, 1, 4, 16, 16)
    val = (x, torch.rand(2, 1, 16, 16, 16))
    hist = train(cfg, tmp_path, brains=[phantom_brain], val=val, progress=False)
    assert len(hist["val_psnr_ema"]) == len(hist["val_step"]) == 2
    saved = torch.load(tmp_path / "model.pt", weights_only=False)
    name = next(iter(saved["model"]))
    assert not torch.equal(saved["model"][name], saved["ema"][name])
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert int(checkpoint["ema"]["n_averaged"]) == 6

    longer = replace(cfg, train=replace(cfg.train, steps=8))
    train(longer, tmp_path, resume=True, brains=[phantom_brain], val=val, progress=False)
    resumed = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert int(resumed["ema"]["n_averaged"]) == 8  # continued, not restarted
