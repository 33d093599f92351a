"""ANISO U-Net of Lin et al. (MLMIR 2019): super-resolves thick slices onto an isotropic grid.

Tensors are ``(batch, channel, slices, rows, cols)``: the slice axis is the first spatial axis,
matching the engine contract (slice axis 0 of a volume). The input has ``k`` times fewer slices
than the output; in-plane sizes are equal.

Why the shape of the net: the encoder pools in-plane only (``(1, 2, 2)``) while the slice axis is
still coarser than the rows/cols, then isotropically, so every level stays as close to isotropic
as the data allow. Each skip path goes through a bottleneck block that ends in a transposed
convolution along the slice axis alone, by the factor that level still lacks, so the decoder works
entirely on the isotropic output grid. The pooling schedule depends only on ``k`` (not on the
patch size), which keeps the network fully convolutional: it can be trained on 32x32x(32/k)
patches and run on large tiles.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class UNetConfig:
    """Size of the network. ``UNetConfig.paper(k)`` is the full-size configuration of the paper.

    ``residual_input`` (not in the paper) adds a linear slice-axis interpolation of the input to
    the output, so the network learns only the correction; it makes short CPU training converge.
    """

    factor: int = 4
    base_filters: int = 16
    levels: int = 5
    residual_input: bool = False
    norm: str = "batch"
    """``batch`` (the paper, release 0.1) or ``none`` (release 0.2): batches of one or two large
    patches give batch norm noisy statistics in training, and its running statistics then
    differ from what a whole-volume tile shows at inference; GroupNorm would normalise each
    tile by its own content, which changes with the tile's share of background. No
    normalisation keeps the network a fixed function of its input, tile by tile."""

    @classmethod
    def paper(cls, factor: int) -> UNetConfig:
        """Five levels, 16 filters doubling per level, no global residual, as published."""
        return cls(factor=factor, base_filters=16, levels=5, residual_input=False)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @property
    def slice_pools(self) -> int:
        """How many of the encoder's pools are in-plane only (log2 of the factor)."""
        return int(round(math.log2(self.factor)))

    def validate(self) -> None:
        if self.factor < 2 or 2**self.slice_pools != self.factor:
            raise ValueError(f"factor must be a power of two >= 2, got {self.factor}")
        if self.levels < 2:
            raise ValueError("levels must be at least 2")
        if self.slice_pools > self.levels - 1:
            raise ValueError(
                f"factor {self.factor} needs at least {self.slice_pools + 1} levels, "
                f"got {self.levels}"
            )
        if self.base_filters < 2 or self.base_filters % 2:
            raise ValueError("base_filters must be an even number >= 2")
        if self.norm not in ("batch", "none"):
            raise ValueError(f"norm must be 'batch' or 'none', got {self.norm!r}")

    def pool_kernels(self) -> list[tuple[int, int, int]]:
        """Pool kernel (slices, rows, cols) below each level: in-plane first, then isotropic."""
        return [
            (1, 2, 2) if level < self.slice_pools else (2, 2, 2) for level in range(self.levels - 1)
        ]

    def remaining_factor(self, level: int) -> int:
        """Slice-axis upsampling still needed at ``level`` to reach the isotropic grid."""
        return self.factor // 2 ** min(level, self.slice_pools)

    def input_multiple(self) -> tuple[int, int]:
        """(slices, in-plane) sizes of an input must be multiples of these."""
        iso_pools = self.levels - 1 - self.slice_pools
        return 2**iso_pools, 2 ** (self.levels - 1)


def _norm(channels: int, kind: str) -> nn.Module:
    return nn.BatchNorm3d(channels) if kind == "batch" else nn.Identity()


class ResidualCore(nn.Module):
    """1x1x1 projection, two 3x3x3 conv + norm + ReLU, added back to the projection."""

    def __init__(self, in_ch: int, out_ch: int, norm: str = "batch") -> None:
        super().__init__()
        bias = norm == "none"
        self.project = nn.Conv3d(in_ch, out_ch, 1)
        self.body = nn.Sequential(
            nn.Conv3d(out_ch, out_ch, 3, padding=1, bias=bias),
            _norm(out_ch, norm),
            nn.ReLU(inplace=True),
            nn.Conv3d(out_ch, out_ch, 3, padding=1, bias=bias),
            _norm(out_ch, norm),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.project(x)
        return F.relu(p + self.body(p))


class SkipBottleneck(nn.Module):
    """Skip path: 1x1x1 shrink to half, 3x3x3 convs, 1x1x1 expand, residual add, then a
    transposed convolution that upsamples the slice axis only, by ``factor`` (skipped if 1)."""

    def __init__(self, ch: int, factor: int, norm: str = "batch") -> None:
        super().__init__()
        half = ch // 2
        bias = norm == "none"
        self.body = nn.Sequential(
            nn.Conv3d(ch, half, 1, bias=bias),
            _norm(half, norm),
            nn.ReLU(inplace=True),
            nn.Conv3d(half, half, 3, padding=1, bias=bias),
            _norm(half, norm),
            nn.ReLU(inplace=True),
            nn.Conv3d(half, half, 3, padding=1, bias=bias),
            _norm(half, norm),
            nn.ReLU(inplace=True),
            nn.Conv3d(half, ch, 1),
        )
        self.up: nn.Module = (
            nn.ConvTranspose3d(ch, ch, (factor, 1, 1), stride=(factor, 1, 1))
            if factor > 1
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(F.relu(x + self.body(x)))


class AnisoUNet(nn.Module):
    """Thick-slice patch ``(B, 1, d, h, w)`` -> isotropic patch ``(B, 1, d*k, h, w)``."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        widths = [config.base_filters * 2**i for i in range(config.levels)]
        self.encoders = nn.ModuleList()
        in_ch = 1
        for w in widths:
            self.encoders.append(ResidualCore(in_ch, w, config.norm))
            in_ch = w
        self.pools = nn.ModuleList(nn.MaxPool3d(k, k) for k in config.pool_kernels())
        # Every level's encoder output travels to the isotropic decoder grid through a skip path.
        self.skips = nn.ModuleList(
            SkipBottleneck(w, config.remaining_factor(i), config.norm) for i, w in enumerate(widths)
        )
        self.ups = nn.ModuleList(
            nn.ConvTranspose3d(widths[i + 1], widths[i], 2, stride=2)
            for i in range(config.levels - 1)
        )
        self.decoders = nn.ModuleList(
            ResidualCore(2 * widths[i], widths[i], config.norm) for i in range(config.levels - 1)
        )
        self.head = nn.Conv3d(widths[0], 1, 1)
        if config.residual_input:
            # Start as plain linear interpolation; the network then learns only the correction.
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def check_input(self, x: torch.Tensor) -> None:
        ms, mp = self.config.input_multiple()
        d, h, w = x.shape[-3:]
        if d % ms or h % mp or w % mp:
            raise ValueError(
                f"input spatial shape {(d, h, w)} must be multiples of ({ms}, {mp}, {mp})"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        feats = []
        h = x
        for level, enc in enumerate(self.encoders):
            h = enc(h)
            feats.append(h)
            if level < len(self.pools):
                h = self.pools[level](h)
        y = self.skips[-1](feats[-1])
        for level in range(self.config.levels - 2, -1, -1):
            y = self.ups[level](y)
            y = self.decoders[level](torch.cat([y, self.skips[level](feats[level])], dim=1))
        out = self.head(y)
        if self.config.residual_input:
            out = out + upsample_slices_linear(x, self.config.factor)
        return out


def upsample_slices_linear(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Linear interpolation along the slice axis onto the contract's output grid.

    Output slice ``i*k + j`` sits at input coordinate ``i + (j - (k-1)/2)/k``, which is exactly
    ``align_corners=False`` resampling; edges are clamped (replicated).
    """
    d, h, w = x.shape[-3:]
    return F.interpolate(x, size=(d * factor, h, w), mode="trilinear", align_corners=False)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
