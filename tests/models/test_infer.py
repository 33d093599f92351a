"""Tiled inference: equals whole-volume inference, seamless weights, deterministic, any size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.aniso_unet import AnisoUNet, UNetConfig
from models.infer import TileSettings, _taper, predict_volume
from models.simulate import degrade_slices


def _net(factor: int) -> AnisoUNet:
    torch.manual_seed(0)
    net = AnisoUNet(UNetConfig(factor=factor, base_filters=2, residual_input=True))
    torch.nn.init.normal_(net.head.weight, std=0.2)  # make the learned part visible
    net.train()
    with torch.no_grad():  # non-trivial batch-norm running statistics
        for _ in range(3):
            net(torch.rand(2, 1, 32 // factor, 32, 32))
    return net.eval()


@pytest.mark.parametrize("factor", [4, 8])
def test_tiled_equals_whole_volume(factor: int, phantom_brain) -> None:  # type: ignore[no-untyped-def]
    vol = degrade_slices(phantom_brain.t1, factor)[:, :, :44]
    net = _net(factor)
    whole = predict_volume(net, vol, tiles=TileSettings(rows=256, cols=256))
    tiled = predict_volume(
        net,
        vol,
        tiles=TileSettings(slices=8 if factor == 4 else 4, rows=32, cols=32,
                           overlap_slices=2, overlap_in_plane=16),
    )
    assert whole.shape == tiled.shape == (vol.shape[0] * factor, 48, 44)
    assert np.abs(whole - tiled).mean() < 0.01 * np.abs(whole).mean()
    assert np.abs(whole - tiled).max() < 0.1 * np.abs(whole).max()


def test_window_ramps_sum_to_one_in_overlaps() -> None:
    a = _taper(64, 16, True, False)
    b = _taper(64, 16, False, True)
    np.testing.assert_allclose(a[-16:] + b[:16], 1.0, atol=1e-9)
    assert a[:48].min() == 1.0


def test_deterministic_and_odd_sizes() -> None:
    net = _net(4)
    vol = np.random.default_rng(0).random((7, 37, 29)).astype(np.float32)
    a = predict_volume(net, vol)
    b = predict_volume(net, vol)
    assert a.shape == (28, 37, 29)
    np.testing.assert_array_equal(a, b)
