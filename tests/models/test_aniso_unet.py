"""ANISO U-Net: shapes for k = 4 and 8 and several widths, the paper's pooling schedule."""

from __future__ import annotations

import pytest
import torch

from models.aniso_unet import AnisoUNet, UNetConfig, count_parameters, upsample_slices_linear


@pytest.mark.parametrize("factor", [4, 8])
@pytest.mark.parametrize("width", [2, 4, 8])
def test_patch_shapes(factor: int, width: int) -> None:
    net = AnisoUNet(UNetConfig(factor=factor, base_filters=width)).eval()
    x = torch.rand(2, 1, 32 // factor, 32, 32)
    with torch.no_grad():
        y = net(x)
    assert y.shape == (2, 1, 32, 32, 32)


@pytest.mark.parametrize("factor", [4, 8])
def test_full_size_configuration_runs_at_small_scale(factor: int) -> None:
    cfg = UNetConfig.paper(factor)
    assert (cfg.base_filters, cfg.levels, cfg.residual_input) == (16, 5, False)
    net = AnisoUNet(cfg).eval()
    assert [enc.project.out_channels for enc in net.encoders] == [16, 32, 64, 128, 256]
    with torch.no_grad():
        y = net(torch.rand(1, 1, 32 // factor, 32, 32))
    assert y.shape == (1, 1, 32, 32, 32)
    assert count_parameters(net) > 5_000_000


def test_pooling_in_plane_while_slice_axis_coarse() -> None:
    assert UNetConfig(factor=4).pool_kernels() == [(1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2)]
    assert UNetConfig(factor=8).pool_kernels() == [(1, 2, 2), (1, 2, 2), (1, 2, 2), (2, 2, 2)]


@pytest.mark.parametrize("factor,expected", [(4, [4, 2, 1, 1, 1]), (8, [8, 4, 2, 1, 1])])
def test_skip_paths_upsample_slice_axis_by_remaining_factor(factor: int, expected: list) -> None:
    net = AnisoUNet(UNetConfig(factor=factor, base_filters=2))
    strides = [
        s.up.stride if isinstance(s.up, torch.nn.ConvTranspose3d) else (1, 1, 1) for s in net.skips
    ]
    assert [st[0] for st in strides] == expected
    assert all(st[1:] == (1, 1) for st in strides)


def test_other_factors_where_arithmetic_allows() -> None:
    net = AnisoUNet(UNetConfig(factor=2, base_filters=2)).eval()
    with torch.no_grad():
        assert net(torch.rand(1, 1, 16, 32, 32)).shape == (1, 1, 32, 32, 32)
    with pytest.raises(ValueError):
        AnisoUNet(UNetConfig(factor=3))
    with pytest.raises(ValueError):
        AnisoUNet(UNetConfig(factor=32, levels=5))


def test_large_tiles_are_fully_convolutional() -> None:
    net = AnisoUNet(UNetConfig(factor=4, base_filters=2)).eval()
    with torch.no_grad():
        assert net(torch.rand(1, 1, 12, 48, 64)).shape == (1, 1, 48, 48, 64)
    with pytest.raises(ValueError, match="multiples"):
        net(torch.rand(1, 1, 10, 48, 64))


def test_residual_variant_starts_as_linear_interpolation() -> None:
    net = AnisoUNet(UNetConfig(factor=4, base_filters=2, residual_input=True)).eval()
    x = torch.rand(1, 1, 8, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net(x), upsample_slices_linear(x, 4), atol=1e-6)
