"""A tiny ``iqt-mc`` release for tests: trained a few steps in random-contrast mode on the
phantom head, released under its own name into a folder (models and node tests share it)."""

from __future__ import annotations

from pathlib import Path

import torch

from models.aniso_unet import UNetConfig
from models.release import MC_MODEL_NAME, release_run
from models.train import DataConfig, OptimConfig, TrainConfig, train
from tests.models.conftest import phantom

PROFILES = ["T2-0.36T", "T2-64mT", "FLAIR-64mT"]


def mc_config(factor: int, steps: int = 3, profiles: list[str] | None = None) -> TrainConfig:
    """A few steps of a two-filter network on random-contrast draws of the phantom."""
    return TrainConfig(
        model=UNetConfig(factor=factor, base_filters=2, levels=4, residual_input=True, norm="none"),
        data=DataConfig(
            train_brains=[],
            val_brains=[],
            contrast="random",
            profiles=list(profiles or PROFILES),
            noise="rician",
            slice_axes=[2],
            draws_per_brain=1,
            patches_per_draw=6,
            patch_in_plane=32,
            random_grid=True,
            in_plane_mm=[1.0, 1.1],
            thin_mm=[0.9, 1.0],
            elastic_mm=1.0,
            thickness_ratios=[0.75, 1.0],
            normalisation="core-median",
            shading=0.2,
            shading_target="remove",
            outside_weight=0.1,
            edge_fraction=0.1,
        ),
        train=OptimConfig(steps=steps, batch_size=2, lr=1e-3, warmup_steps=1, seed=factor),
    )


def tiny_mc_release(
    folder: Path, version: str = "0.1.0", factors: tuple[int, ...] = (4, 8), steps: int = 3
) -> Path:
    """Train and release ``iqt-mc`` ``version`` for ``factors`` into ``folder``; returns it."""
    brain = phantom()
    for k in factors:
        run = folder.parent / f"{folder.name}-run-{version}-k{k}"
        torch.manual_seed(k)
        train(
            mc_config(k, steps),
            run,
            brains=[brain],
            val=(torch.empty(0), torch.empty(0)),
            progress=False,
        )
        release_run(run, folder, "", "test-cpu", version=version, name=MC_MODEL_NAME)
    return folder
