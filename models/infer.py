"""Whole-volume prediction with large overlapping tiles blended by a smooth window.

Why tiles: a 256x256x(30*k) output with 16 filters at full resolution needs several GB of
activations; tiles bound memory whatever the volume size. Why large, fully convolutional tiles:
the reference code predicted 32^3 patches and kept only their central 16^3 (7/8 of the compute
thrown away); here a tile is e.g. 160x160 in-plane and all slices, neighbours overlap by a margin,
and each tile's prediction is weighted by a window that is flat in the middle and falls smoothly
(raised cosine) to almost zero at edges shared with another tile, so no seam is visible.
At the volume's own borders the window stays flat; the volume is reflect-padded so the network
sees plausible context there.

Deterministic: eval mode (batch norm uses running statistics), no sampling, fixed tile order.
On CUDA, bf16 (or fp16) autocast; on CPU, float32 with the given number of threads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.aniso_unet import AnisoUNet


@dataclass(frozen=True)
class TileSettings:
    """Tile size in *input* voxels (slices, rows, cols) and in-plane/slice overlaps.

    ``slices=0`` means all slices in one tile (typical: low-field series have 20-40 slices).
    ``max_tile_voxels`` caps a tile's *output* voxels (the memory bound: at 8 base filters one
    full-resolution activation is 32 bytes per output voxel); when the requested tile exceeds
    it, the tile shape under the cap with the least total compute is used. 0: no cap.
    """

    slices: int = 0
    rows: int = 160
    cols: int = 160
    overlap_slices: int = 4
    overlap_in_plane: int = 32
    max_tile_voxels: int = 4_000_000


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def _starts(size: int, tile: int, overlap: int) -> list[int]:
    """Tile origins covering ``size`` with at least ``overlap`` between neighbours."""
    if tile >= size:
        return [0]
    stride = max(1, tile - overlap)
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)
    return starts


def _fit_tiles(
    tiles: TileSettings,
    k: int,
    ms: int,
    mp: int,
    need: tuple[int, int, int],
    start: tuple[int, int, int],
) -> tuple[int, int, int]:
    """The (slices, rows, cols) tile under the voxel cap that needs the least total compute.

    Smaller tiles overlap more, so the search weighs the number of tiles against their size.
    """
    best: tuple[float, int, int, int] | None = None
    min_s = _round_up(tiles.overlap_slices + ms, ms)
    for t in range(max(64, mp), max(start[1], start[2]) + 1, mp):
        tr, tc = min(t, start[1]), min(t, start[2])
        for ts in range(min_s, start[0] + 1, ms):
            if ts * k * tr * tc > tiles.max_tile_voxels:
                break
            count = (
                len(_starts(max(ts, need[0]), ts, tiles.overlap_slices))
                * len(_starts(max(tr, need[1]), tr, tiles.overlap_in_plane))
                * len(_starts(max(tc, need[2]), tc, tiles.overlap_in_plane))
            )
            cost = count * ts * tr * tc
            if best is None or cost < best[0]:
                best = (cost, ts, tr, tc)
    if best is None:  # the cap is below the smallest sensible tile: use that tile anyway
        return min_s, min(64, start[1]), min(64, start[2])
    return best[1], best[2], best[3]


def _taper(length: int, ramp: int, left_edge: bool, right_edge: bool) -> np.ndarray:
    """1D window: raised-cosine ramps of ``ramp`` samples on sides shared with a neighbour."""
    w = np.ones(length, np.float64)
    ramp = min(ramp, length // 2)
    if ramp > 0:
        r = 0.5 - 0.5 * np.cos(np.pi * (np.arange(ramp) + 0.5) / ramp)
        if not left_edge:
            w[:ramp] = r
        if not right_edge:
            w[length - ramp :] = r[::-1]
    return np.maximum(w, 1e-4)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device asked for, or by default the GPU when there is one, else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _device_and_autocast(device: str | torch.device | None):  # type: ignore[no-untyped-def]
    dev = resolve_device(device)
    if dev.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return dev, torch.autocast("cuda", dtype=dtype)
    return dev, torch.autocast("cpu", enabled=False)


def predict_volume(
    model: AnisoUNet,
    volume: np.ndarray,
    *,
    tiles: TileSettings | None = None,
    device: str | torch.device | None = None,
    threads: int | None = None,
) -> np.ndarray:
    """Predict the (n*k, rows, cols) volume from a normalised (n, rows, cols) float32 volume."""
    if volume.ndim != 3:
        raise ValueError(f"expected (slices, rows, cols), got {volume.shape}")
    tiles = tiles or TileSettings()
    k = model.config.factor
    ms, mp = model.config.input_multiple()
    n, rows, cols = volume.shape
    if threads:
        torch.set_num_threads(threads)
    dev, autocast = _device_and_autocast(device)
    model = model.to(dev).eval()

    # Every border gets the same reflected context (half an overlap), whether the volume is cut
    # into many tiles or fits one; tile sizes are rounded to what the pooling needs.
    margin_s = tiles.overlap_slices // 2
    margin_r = margin_c = tiles.overlap_in_plane // 2
    need_s, need_r, need_c = n + 2 * margin_s, rows + 2 * margin_r, cols + 2 * margin_c
    ts = _round_up(min(tiles.slices or need_s, need_s), ms)
    tr = _round_up(min(tiles.rows, need_r), mp)
    tc = _round_up(min(tiles.cols, need_c), mp)
    if tiles.max_tile_voxels and ts * k * tr * tc > tiles.max_tile_voxels:
        ts, tr, tc = _fit_tiles(tiles, k, ms, mp, (need_s, need_r, need_c), (ts, tr, tc))
    ps, pr, pc = max(ts, need_s), max(tr, need_r), max(tc, need_c)
    pad = (
        (margin_s, ps - n - margin_s),
        (margin_r, pr - rows - margin_r),
        (margin_c, pc - cols - margin_c),
    )
    padded = np.pad(volume.astype(np.float32, copy=False), pad, mode="reflect")

    out = np.zeros((ps * k, pr, pc), np.float32)
    weight = np.zeros_like(out)
    s_starts = _starts(ps, ts, tiles.overlap_slices)
    r_starts = _starts(pr, tr, tiles.overlap_in_plane)
    c_starts = _starts(pc, tc, tiles.overlap_in_plane)
    with torch.inference_mode(), autocast:
        for s0 in s_starts:
            ws = _taper(ts * k, tiles.overlap_slices * k, s0 == s_starts[0], s0 == s_starts[-1])
            for r0 in r_starts:
                wr = _taper(tr, tiles.overlap_in_plane, r0 == r_starts[0], r0 == r_starts[-1])
                for c0 in c_starts:
                    wc = _taper(tc, tiles.overlap_in_plane, c0 == c_starts[0], c0 == c_starts[-1])
                    x = padded[s0 : s0 + ts, r0 : r0 + tr, c0 : c0 + tc]
                    xt = torch.from_numpy(np.ascontiguousarray(x))[None, None].to(dev)
                    y = model(xt)[0, 0].float().cpu().numpy()
                    w = (ws[:, None, None] * wr[None, :, None] * wc[None, None, :]).astype(
                        np.float32
                    )
                    sl = (slice(s0 * k, (s0 + ts) * k), slice(r0, r0 + tr), slice(c0, c0 + tc))
                    out[sl] += y * w
                    weight[sl] += w
    out /= weight
    return out[
        margin_s * k : (margin_s + n) * k,
        margin_r : margin_r + rows,
        margin_c : margin_c + cols,
    ].copy()


# The flips a ``flips``-member ensemble averages, in the order they are added: left-right first
# (a head is nearly mirror-symmetric there, so it is the most "new view" per cost), then
# anterior-posterior, then the slice order. Every flip is one the network was trained with
# (``models.patches`` flips patches on all three axes), and each is undone exactly: the output
# grid of k slices per input slice is symmetric under reversal of the slice order.
FLIP_AXES: dict[int, tuple[tuple[int, ...], ...]] = {
    1: ((),),
    2: ((), (2,)),
    4: ((), (2,), (1,), (1, 2)),
    8: ((), (2,), (1,), (1, 2), (0,), (0, 2), (0, 1), (0, 1, 2)),
}


def predict_flip_ensemble(
    model: AnisoUNet,
    volume: np.ndarray,
    flips: int = 1,
    *,
    tiles: TileSettings | None = None,
    device: str | torch.device | None = None,
    threads: int | None = None,
) -> np.ndarray:
    """The mean of ``predict_volume`` over ``flips`` mirrored copies (1, 2, 4 or 8), each
    mirrored back.

    Why: a network's errors that do not follow the anatomy (noise it kept, texture it invented)
    differ between mirrored inputs and partly cancel in the mean, while what it recovered from
    the anatomy agrees; each member costs one more full prediction.
    """
    if flips not in FLIP_AXES:
        raise ValueError(f"flips must be one of {sorted(FLIP_AXES)}, not {flips}")
    total: np.ndarray | None = None
    for axes in FLIP_AXES[flips]:
        x = np.flip(volume, axes) if axes else volume
        y = predict_volume(
            model, np.ascontiguousarray(x), tiles=tiles, device=device, threads=threads
        )
        y = np.flip(y, axes) if axes else y
        total = y.copy() if total is None else total + y
    assert total is not None
    return total / np.float32(len(FLIP_AXES[flips]))
