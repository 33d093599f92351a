"""Tiled inference: equals whole-volume inference, seamless weights, deterministic, any size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.aniso_unet import AnisoUNet, UNetConfig
from models.infer import TileSettings, _taper, predict_flip_ensemble, predict_volume
from models.simulate import degrade_slices


def _net(factor: int, width: int = 4) -> AnisoUNet:
    """A random network whose output really depends on its input (no global residual)."""
    torch.manual_seed(0)
    net = AnisoUNet(UNetConfig(factor=factor, base_filters=width))
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
        tiles=TileSettings(slices=8, rows=32, cols=32, overlap_slices=4, overlap_in_plane=16),
    )
    assert whole.shape == tiled.shape == (vol.shape[0] * factor, 48, 44)
    spread = float(whole.std())
    assert spread > 1e-3, "the test network must not be constant"
    # Zero padding inside each tile changes the border of its field of view; blending keeps the
    # difference to a fraction of the output's own variation.
    assert np.abs(whole - tiled).mean() < 0.02 * spread
    assert np.abs(whole - tiled).max() < 0.2 * spread


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


def test_memory_cap_picks_tiles_under_the_cap() -> None:
    from models.infer import _fit_tiles

    settings = TileSettings()
    ts, tr, tc = _fit_tiles(settings, 8, 2, 16, (34, 288, 288), (34, 160, 160))
    assert ts * 8 * tr * tc <= settings.max_tile_voxels
    assert ts % 2 == 0 and tr % 16 == 0 and tc % 16 == 0
    net = _net(8)
    vol = np.random.default_rng(1).random((6, 40, 40)).astype(np.float32)
    capped = predict_volume(net, vol, tiles=TileSettings(max_tile_voxels=20_000))
    free = predict_volume(net, vol, tiles=TileSettings(max_tile_voxels=0))
    assert capped.shape == free.shape == (48, 40, 40)
    assert np.abs(capped - free).mean() < 0.05 * float(free.std())


def test_flip_ensemble_undoes_every_flip_exactly() -> None:
    """With its layers silenced the network is its linear slice interpolation, which every
    mirrored copy reproduces: the ensemble must equal one prediction, so no flip (the slice
    order's included) is undone one slice off."""
    net = AnisoUNet(UNetConfig(factor=4, base_filters=4, residual_input=True))
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
    vol = np.random.default_rng(1).random((8, 32, 32)).astype(np.float32)
    vol[:, :, :8] += 2.0  # nothing symmetric about it
    one = predict_volume(net.eval(), vol)
    assert one.std() > 0.1
    for flips in (2, 4, 8):
        np.testing.assert_allclose(predict_flip_ensemble(net, vol, flips), one, atol=1e-5)


def test_full_flip_ensemble_is_mirror_equivariant() -> None:
    """A random network is not; the mean over all eight flips is, up to padding at the far
    borders, and differs from a single prediction."""
    net = _net(4)
    vol = np.random.default_rng(2).random((8, 32, 32)).astype(np.float32)
    single = predict_volume(net, vol)
    ensemble = predict_flip_ensemble(net, vol, 8)
    mirrored = np.flip(predict_flip_ensemble(net, np.flip(vol, 2).copy(), 8), 2)
    spread = float(single.std())
    assert (
        np.abs(np.flip(predict_volume(net, np.flip(vol, 2).copy()), 2) - single).mean()
        > 0.05 * spread
    )
    assert np.abs(mirrored - ensemble).mean() < 0.01 * spread
    with pytest.raises(ValueError, match="flips must be one of"):
        predict_flip_ensemble(net, vol, 3)
