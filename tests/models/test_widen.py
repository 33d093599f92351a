"""Widening a trained network keeps its function and leaves the new channels trainable."""

from __future__ import annotations

import pytest
import torch

from models.aniso_unet import AnisoUNet, UNetConfig
from models.train import initial_weights
from models.widen import widen


def _trained_like(factor: int) -> AnisoUNet:
    """A network whose weights are all non-zero (the residual head starts at zero otherwise)."""
    torch.manual_seed(factor)
    net = AnisoUNet(
        UNetConfig(factor=factor, base_filters=4, levels=4, residual_input=True, norm="none")
    )
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


@pytest.mark.parametrize("factor", [4, 8])
def test_widened_network_computes_the_same_function(factor: int) -> None:
    narrow = _trained_like(factor)
    wide = widen(narrow, 6).eval()
    assert [e.project.out_channels for e in wide.encoders] == [6, 12, 24, 48]
    x = torch.rand(2, 1, 32 // factor, 32, 32)
    with torch.no_grad():
        before, after = narrow(x), wide(x)
    assert before.abs().max() > 0.01
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-4)


def test_new_channels_learn() -> None:
    """The zeroed weights from new into old channels receive gradient, so training uses them."""
    wide = widen(_trained_like(4), 6).train()
    loss = wide(torch.rand(1, 1, 8, 32, 32)).square().mean()
    loss.backward()
    head_new_inputs = wide.head.weight.grad[:, 4:]
    assert head_new_inputs.abs().sum() > 0


def test_narrowing_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot narrow"):
        widen(_trained_like(4), 2)


def test_warm_start_from_a_run_widens_to_the_configured_width(tmp_path) -> None:
    narrow = _trained_like(4)
    path = tmp_path / "model.pt"
    torch.save({"model": narrow.state_dict(), "config": {"model": narrow.config.to_dict()}}, path)
    wide_config = UNetConfig(**{**narrow.config.to_dict(), "base_filters": 8})
    state = initial_weights(path, torch.device("cpu"), wide_config)
    wide = AnisoUNet(wide_config).eval()
    wide.load_state_dict(state)
    x = torch.rand(1, 1, 8, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(wide(x), narrow(x), atol=1e-5, rtol=1e-4)
    other = UNetConfig(**{**narrow.config.to_dict(), "base_filters": 8, "levels": 5})
    with pytest.raises(ValueError, match="cannot be widened"):
        initial_weights(path, torch.device("cpu"), other)
