"""Grow a trained ANISO U-Net to more filters without changing what it computes.

Why: the half-width network (8 base filters) stopped improving on our brains after about 4 CPU-
hours, and training a wider one from scratch on the CPU would throw those hours away. Widening
keeps every trained weight and starts the wider network as exactly the same function, so
training continues from the released quality instead of from zero.

How: every convolution keeps its old weights in the first channels. The new output channels get
the layer's ordinary random initialisation; every weight from a NEW input channel into an OLD
output channel is set to zero, so the new channels cannot change the old outputs until training
moves those weights away from zero (their gradient is not zero, because the new channels carry
non-zero activations). The decoders' first convolution reads the concatenation [upsampled,
skip]; its old input channels are mapped onto both halves of the wider concatenation.
"""

from __future__ import annotations

import torch
from torch import nn

from models.aniso_unet import AnisoUNet, UNetConfig


def widened_config(config: UNetConfig, base_filters: int) -> UNetConfig:
    """``config`` with ``base_filters`` raised; every other field must stay as it was."""
    if base_filters < config.base_filters:
        raise ValueError(f"cannot narrow {config.base_filters} filters to {base_filters}")
    return UNetConfig(**{**config.to_dict(), "base_filters": base_filters})


def _input_index(name: str, old_in: int, new_in: int) -> torch.Tensor:
    """Where the old input channels of layer ``name`` sit among the new layer's inputs."""
    if name.startswith("decoders.") and name.endswith(".project"):
        old_half, new_half = old_in // 2, new_in // 2
        return torch.cat([torch.arange(old_half), new_half + torch.arange(old_half)])
    return torch.arange(old_in)


def widen(old: AnisoUNet, base_filters: int, seed: int = 0) -> AnisoUNet:
    """A wider ``AnisoUNet`` computing exactly what ``old`` computes (up to float rounding)."""
    config = widened_config(old.config, base_filters)
    torch.manual_seed(seed)
    new = AnisoUNet(config)
    old_modules = dict(old.named_modules())
    with torch.no_grad():
        for name, layer in new.named_modules():
            if not isinstance(layer, nn.Conv3d | nn.ConvTranspose3d):
                continue
            before = old_modules[name]
            transposed = isinstance(layer, nn.ConvTranspose3d)
            # Conv3d weights are (out, in, ...); ConvTranspose3d weights are (in, out, ...).
            out_dim, in_dim = (1, 0) if transposed else (0, 1)
            old_w, new_w = before.weight, layer.weight
            n_out = old_w.shape[out_dim]
            ins = _input_index(name, old_w.shape[in_dim], new_w.shape[in_dim])
            fresh_in = torch.ones(new_w.shape[in_dim], dtype=torch.bool)
            fresh_in[ins] = False
            old_rows = new_w.narrow(out_dim, 0, n_out)
            old_rows.index_fill_(in_dim, fresh_in.nonzero().flatten(), 0.0)
            old_rows.index_copy_(in_dim, ins, old_w)
            if layer.bias is not None:
                layer.bias[:n_out] = before.bias
    new.input_normalisation = getattr(old, "input_normalisation", None)
    new.consistency_weight = getattr(old, "consistency_weight", 0.0)
    new.consistency_gain_sigma_mm = getattr(old, "consistency_gain_sigma_mm", 0.0)
    return new
