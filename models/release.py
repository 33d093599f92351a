"""Released weights: safetensors files, a manifest of their sha256, and a model card each.

Layout under ``models/weights/``:

- ``iqt-t1-k4.safetensors`` / ``iqt-t1-k8.safetensors``: the state dict (multi-dimensional
  tensors stored as float16 to keep files small, 1-D tensors such as batch-norm statistics as
  float32) with the network configuration in the safetensors metadata;
- ``manifest.json``: for each file its sha256, factor, version and configuration; loading
  refuses a file whose hash differs (a corrupted or swapped file must never run silently);
- ``iqt-t1-k4.md`` / ``iqt-t1-k8.md``: model cards.

Releasing: ``python -m models.release RUN_DIR --card-extra EVAL.md`` after ``dicomnode evaluate``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads only where weights are read or written: the registry CLI and
    # the node's start read the manifest and hash files without paying torch's import time
    from models.aniso_unet import AnisoUNet

MODEL_NAME = "iqt-t1"
VERSION = "0.1.0"


class WeightsIntegrityError(RuntimeError):
    """A weight file does not match the sha256 recorded for it."""


def weights_dir() -> Path:
    return Path(str(resources.files("models").joinpath("weights")))


def file_name(factor: int) -> str:
    return f"{MODEL_NAME}-k{factor}.safetensors"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(directory: Path | None = None) -> dict:
    path = (directory or weights_dir()) / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {"models": {}}


def released_factors(directory: Path | None = None) -> tuple[int, ...]:
    return tuple(sorted(int(e["factor"]) for e in read_manifest(directory)["models"].values()))


def save_weights(model: AnisoUNet, path: Path, metadata: dict[str, str]) -> str:
    """Write the state dict as safetensors; returns the file's sha256."""
    from safetensors.torch import save_file

    tensors = {}
    for key, value in model.state_dict().items():
        v = value.detach().cpu()
        if v.is_floating_point():
            v = v.half() if v.ndim > 1 else v.float()
        tensors[key] = v.contiguous()
    # One metadata key: safetensors writes its metadata map in hash order, so several keys
    # would make the bytes (and the sha256) of identical weights differ between releases.
    meta = {"iqt": json.dumps({"config": model.config.to_dict(), **metadata}, sort_keys=True)}
    save_file(tensors, str(path), metadata=meta)
    path.chmod(0o644)  # safetensors creates the file owner-only; released files are shared
    return sha256_file(path)


def load_weights(path: Path, expected_sha256: str | None) -> AnisoUNet:
    """Build the network from a safetensors file after checking its sha256."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if expected_sha256 is not None:
        actual = sha256_file(path)
        if actual != expected_sha256:
            raise WeightsIntegrityError(
                f"{path.name}: sha256 {actual} does not match the recorded {expected_sha256}"
            )
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "iqt" not in meta:
        raise ValueError(f"{path.name}: not an {MODEL_NAME} weight file (no 'iqt' metadata)")
    from models.aniso_unet import AnisoUNet, UNetConfig

    config = UNetConfig(**json.loads(meta["iqt"])["config"])
    model = AnisoUNet(config)
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
    model.load_state_dict(state)
    return model.eval()


def load_released(factor: int, directory: Path | None = None) -> tuple[AnisoUNet, dict]:
    """The released network for ``factor`` and its manifest entry (sha256 checked)."""
    directory = directory or weights_dir()
    entry = read_manifest(directory)["models"].get(file_name(factor))
    if entry is None:
        raise FileNotFoundError(f"no released {MODEL_NAME} weights for k={factor} in {directory}")
    return load_weights(directory / file_name(factor), entry["sha256"]), entry


def release_run(
    run_dir: Path,
    out_dir: Path,
    card_extra: str = "",
    hardware: str = "",
    earlier_stages: list[Path] | None = None,
    tile: dict[str, int] | None = None,
    consistency_correction: bool = False,
) -> Path:
    """Turn a training run (``model.pt``) into a released file + card; ``earlier_stages`` are
    the runs it was fine-tuned from, whose time and steps count towards the total."""
    import torch

    from models.aniso_unet import AnisoUNet, UNetConfig, count_parameters

    ck = torch.load(run_dir / "model.pt", weights_only=False)
    stages = []
    for d in earlier_stages or []:
        h = torch.load(Path(d) / "model.pt", weights_only=False)
        stages.append((h["history"], h["config"]))
    cfg = ck["config"]
    model = AnisoUNet(UNetConfig(**cfg["model"]))
    model.load_state_dict(ck["model"])
    factor = model.config.factor
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / file_name(factor)
    history = ck["history"]
    sha = save_weights(model, path, {"name": MODEL_NAME, "version": VERSION})
    manifest = read_manifest(out_dir)
    manifest["models"][path.name] = {
        "factor": factor,
        "version": VERSION,
        "sha256": sha,
        "config": cfg,
        "parameters": count_parameters(model),
        "training_seconds": round(
            sum(float(h.get("seconds", 0.0)) for h, _ in stages) + float(history.get("seconds", 0))
        ),
        "steps": sum(int(h.get("steps_done", len(h["loss"]))) for h, _ in stages)
        + int(history.get("steps_done", len(history["loss"]))),
        "stages": [
            {
                "steps": int(h.get("steps_done", len(h["loss"]))),
                "seconds": round(float(h.get("seconds", 0.0))),
                "lr": c["train"]["lr"],
                "batch_size": c["train"]["batch_size"],
                "patch_in_plane": c["data"].get("patch_in_plane", 32),
                "hf_gm_scale": c["data"].get("hf_gm_scale", [1.0, 1.0]),
            }
            for h, c in [*stages, (history, cfg)]
        ],
        "released": datetime.now(UTC).strftime("%Y-%m-%d"),
    }
    if tile:
        manifest["models"][path.name]["tile"] = tile
    manifest["models"][path.name]["consistency_correction"] = consistency_correction
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    card = model_card(
        manifest["models"][path.name],
        path,
        history,
        hardware or platform.processor() or platform.machine(),
        card_extra,
    )
    (out_dir / f"{MODEL_NAME}-k{factor}.md").write_text(card)
    return path


def model_card(entry: dict, path: Path, history: dict, hardware: str, extra: str) -> str:
    from models.profile import load_profile

    cfg = entry["config"]
    prof = load_profile(cfg["data"]["profile"])
    k = entry["factor"]
    m, t = cfg["model"], cfg["train"]
    arch = f"ANISO U-Net, {m['levels']} levels, {m['base_filters']} base filters (paper: 16)"
    opt = f"{t['loss']} / Adam lr {t['lr']}, warm-up {t['warmup_steps']} + cosine"
    stages = "; ".join(
        f"{i + 1}: {st['steps']} steps x {st.get('batch_size', '?')} patches "
        f"{st.get('patch_in_plane', 32)}^2 x {st.get('patch_in_plane', 32) // k} -> "
        f"{st.get('patch_in_plane', 32)}^3, {st['seconds'] / 60:.0f} min, lr {st['lr']}, "
        f"target GM scale {st['hf_gm_scale']}"
        for i, st in enumerate(entry.get("stages", []))
    )
    hw = f"CPU ({hardware}), {t['threads']} thread(s), 2 cores shared with other jobs, no GPU"
    val = history.get("val_psnr") or [float("nan")]
    lin = history.get("val_psnr_linear") or [float("nan")]
    return f"""# Model card: {MODEL_NAME} k={k} (version {entry["version"]})

Through-plane super-resolution and low-to-high-field contrast transfer for T1-weighted brain MRI
(Image Quality Transfer, ANISO U-Net of Lin et al. 2019), trained for the {prof.name} profile:
{k} thin slices per acquired slice.

- file: `{path.name}` ({path.stat().st_size / 1e6:.1f} MB, conv weights float16)
- sha256: `{entry["sha256"]}`
- engine: `models.iqt_engine.IQTEngine.from_release()` (name `iqt-t1`)
- input: float32 array (slices, rows, cols), slice axis 0, any non-negative intensity scale
  (the engine divides by the head's 99th percentile, see `models/normalize.py`, and multiplies
  back); contiguous slices (thickness = spacing) as trained.

## Configuration

| | |
|---|---|
| architecture | {arch}, global residual {m["residual_input"]} |
| parameters | {entry["parameters"]:,} |
| loss / optimiser | {opt} |
| total steps | {entry["steps"]} |
| stages | {stages} |
| inference tile | {entry.get("tile", "default (models.infer.TileSettings)")} |
| back-projection | {"on" if entry.get("consistency_correction") else "off"} (see EVALUATION.md) |
| training time | {entry["training_seconds"] / 60:.0f} min wall clock |
| hardware | {hw} |
| seed | {cfg["train"]["seed"]} |

This is the *reduced* model that fits a CPU budget; the full-size configuration
(`models/configs/t1_k{k}_full.toml`: 16 base filters, no global residual) exists and is tested
at small scale, but was not trained for this release.

## Data

Only brains shipped in PyPI wheels. Training: {", ".join(cfg["data"]["train_brains"])}.
Held out for validation/evaluation: {", ".join(cfg["data"]["val_brains"])}.
Tissue maps: shipped GM/WM for mni152-2009a, 3-class Gaussian mixture otherwise.
Every refill draws {cfg["data"]["draws_per_brain"]} simulated acquisitions per brain (random
slice axis among {cfg["data"]["slice_axes"]}, random affine +-10 deg / +-10 %, smooth bias field,
flips), {cfg["data"]["patches_per_draw"]} patches per draw with background rejection
(>= {cfg["data"]["min_foreground"]:.0%} head voxels).

## Simulator

Lin et al. 2019 Algorithm 1 (`models/simulate.py`): Gaussian slice profile FWHM = slice
thickness = {k} voxels (thickness ratio {cfg["data"]["thickness_ratio"]}), a slice every {k}
voxels, GM rescaled and {cfg["data"]["noise"]} noise added so that (SNR_WM, SNR_GM) ~
N({list(prof.snr_mean)}, {[list(r) for r in prof.snr_covariance]}) ({prof.source}).

## Validation during training

Held-out patches (axial, mean SNR): final {val[-1]:.2f} dB vs linear interpolation {lin[-1]:.2f} dB
(PSNR on the normalised scale, peak 1).

{extra}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--card-extra", type=Path, default=None)
    parser.add_argument("--hardware", default="")
    parser.add_argument(
        "--back-projection",
        action="store_true",
        help="release with the data-consistency correction on (only if it helped held-out)",
    )
    parser.add_argument(
        "--tile",
        default="",
        help='inference tile as JSON, e.g. \'{"slices": 16, "rows": 64, "cols": 64}\'',
    )
    parser.add_argument(
        "--earlier",
        type=Path,
        action="append",
        default=[],
        help="run dir of an earlier stage this run was fine-tuned from",
    )
    args = parser.parse_args()
    extra = args.card_extra.read_text() if args.card_extra else ""
    tile = json.loads(args.tile) if args.tile else None
    path = release_run(
        args.run_dir,
        args.out or weights_dir(),
        extra,
        args.hardware,
        args.earlier,
        tile,
        args.back_projection,
    )
    print(path, sha256_file(path))


if __name__ == "__main__":
    main()
