"""Released weights: safetensors files, a manifest of their sha256, and a model card each.

Layout under ``models/weights/``:

- ``NAME-VERSION-kK.safetensors`` (``iqt-t1-kK.safetensors`` for 0.1.0, named before there
  was a second version), NAME ``iqt-t1`` (T1 at 0.36 T) or ``iqt-mc`` (one contrast-agnostic
  network for several profiles, trained with ``[data] contrast = "random"``): the state dict
  (multi-dimensional tensors stored as float16 to keep files small, 1-D tensors such as
  batch-norm statistics as float32) with the network configuration, the input normalisation
  it was trained with and (``iqt-mc``) its profiles in the safetensors metadata;
- ``manifest.json``: for each file its sha256, factor, version, configuration and the
  profile it serves (``profile``), or the profiles (``profiles``) of a multi-contrast file;
  entries without ``name`` are ``iqt-t1``'s. Loading refuses a file whose hash differs (a
  corrupted or swapped file must never run silently);
- a model card beside each file (same name, ``.md``).

Several versions ship side by side: the registry registers every one (so ``dicomnode models
rollback`` can return to an older one), and code that asks for "the released model" without a
version gets the newest version of each factor.

Releasing: ``python -m models.release RUN_DIR --card-extra EVAL.md`` after ``dicomnode evaluate``
(``--name iqt-mc`` for a random-contrast run).
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
MC_MODEL_NAME = "iqt-mc"
"""The contrast-agnostic networks: one file per factor serving every profile it lists."""
VERSION = "0.10.0"
FIRST_VERSION = "0.1.0"
DEFAULT_NORMALISATION = "head-p99"
"""What a weights file without ``input_normalisation`` metadata was trained with (0.1.0)."""


class WeightsIntegrityError(RuntimeError):
    """A weight file does not match the sha256 recorded for it."""


def weights_dir() -> Path:
    return Path(str(resources.files("models").joinpath("weights")))


def file_name(factor: int, version: str = VERSION, name: str = MODEL_NAME) -> str:
    if version == FIRST_VERSION and name == MODEL_NAME:
        return f"{MODEL_NAME}-k{factor}.safetensors"
    return f"{name}-{version}-k{factor}.safetensors"


def entry_name(entry: dict) -> str:
    """The model a manifest entry belongs to (entries written before ``iqt-mc`` name none)."""
    return str(entry.get("name") or MODEL_NAME)


def entry_profiles(entry: dict) -> list[str]:
    """The registry profiles a manifest entry serves: ``profiles``, else its one ``profile``."""
    if entry.get("profiles"):
        return [str(p) for p in entry["profiles"]]
    return [str(entry["profile"])] if entry.get("profile") else []


def version_key(version: str) -> tuple[int, ...]:
    """Orders "0.10.0" after "0.2.0"; a version that is not dotted numbers sorts first."""
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return (-1,)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(directory: Path | None = None) -> dict:
    path = (directory or weights_dir()) / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {"models": {}}


def released_entries(directory: Path | None = None, name: str = MODEL_NAME) -> dict[str, dict]:
    """File name -> manifest entry of every released file of model ``name``."""
    models = read_manifest(directory)["models"]
    return {file: entry for file, entry in models.items() if entry_name(entry) == name}


def released_factors(directory: Path | None = None, name: str = MODEL_NAME) -> tuple[int, ...]:
    return tuple(sorted({int(e["factor"]) for e in released_entries(directory, name).values()}))


def released_profiles(directory: Path | None = None, name: str = MODEL_NAME) -> tuple[str, ...]:
    """Every profile some released file of model ``name`` serves."""
    entries = released_entries(directory, name).values()
    return tuple(sorted({p for entry in entries for p in entry_profiles(entry)}))


def released_entry(
    factor: int,
    directory: Path | None = None,
    version: str | None = None,
    name: str = MODEL_NAME,
) -> tuple[str, dict]:
    """(file name, manifest entry) of the newest release of ``factor`` (or of ``version``)."""
    entries = [
        (file, entry)
        for file, entry in released_entries(directory, name).items()
        if int(entry["factor"]) == factor and (version is None or entry["version"] == version)
    ]
    if not entries:
        which = f" version {version}" if version else ""
        raise FileNotFoundError(
            f"no released {name}{which} weights for k={factor} in {directory or weights_dir()}"
        )
    return max(entries, key=lambda item: version_key(str(item[1]["version"])))


def save_weights(model: AnisoUNet, path: Path, metadata: dict[str, object]) -> str:
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

    info = json.loads(meta["iqt"])
    config = UNetConfig(**info["config"])
    model = AnisoUNet(config)
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
    model.load_state_dict(state)
    # The scale the network's inputs were divided by in training travels with its weights, so
    # an imported or registry-loaded file can never run with the wrong normalisation.
    model.input_normalisation = str(info.get("input_normalisation", DEFAULT_NORMALISATION))
    # Likewise the weight of the contrast-matched back-projection tuned for this file (0: off).
    model.consistency_weight = float(info.get("consistency_weight", 0.0))
    # and the width of the smooth gain it keeps (0: releases before 0.5, which kept shading).
    model.consistency_gain_sigma_mm = float(info.get("consistency_gain_sigma_mm", 0.0))
    # and how many mirrored copies of the input its prediction averages (1: releases before 0.6).
    model.flip_ensemble = int(info.get("flip_ensemble", 1))
    # and the weight of the per-series through-plane detail blended in (0: off, every release).
    model.detail_weight = float(info.get("detail_weight", 0.0))
    # and the degree of the smooth shading fitted to its output and divided out by the pipeline
    # (pipeline.bias.remove_output_shading; 0: none, releases before 0.10).
    model.output_shading_degree = int(info.get("output_shading_degree", 0))
    # The profiles a contrast-agnostic file was trained for (empty for iqt-t1 files).
    model.profiles = tuple(str(p) for p in info.get("profiles", ()))
    return model.eval()


def load_released(
    factor: int,
    directory: Path | None = None,
    version: str | None = None,
    name: str = MODEL_NAME,
) -> tuple[AnisoUNet, dict]:
    """The newest (or the given version's) released network of model ``name`` for ``factor``
    and its manifest entry, with the entry's ``file`` name added (sha256 checked)."""
    directory = directory or weights_dir()
    file, entry = released_entry(factor, directory, version, name)
    return load_weights(directory / file, entry["sha256"]), {**entry, "file": file}


def release_run(
    run_dir: Path,
    out_dir: Path,
    card_extra: str = "",
    hardware: str = "",
    earlier_stages: list[Path] | None = None,
    tile: dict[str, int] | None = None,
    consistency_correction: bool = False,
    version: str = VERSION,
    consistency_weight: float = 0.0,
    continues: str | None = None,
    consistency_gain_sigma_mm: float = 0.0,
    name: str = MODEL_NAME,
    flip_ensemble: int = 1,
    weights: str = "final",
    detail_weight: float = 0.0,
    output_shading_degree: int = 0,
) -> Path:
    """Turn a training run (``model.pt``) into a released file + card; ``earlier_stages`` are
    the runs it was fine-tuned from, whose time and steps count towards the total.

    ``name``: ``iqt-t1`` for a T1 run, another name (``iqt-mc``) for a random-contrast run
    (``[data] contrast = "random"``), whose entry lists the profiles it was trained for.

    ``continues`` names the released version the run started from (``--init-from``): that
    release's stages, time and steps (from the manifest, its run folders being long gone) are
    counted first, so the card's CPU-hours are the model's whole history.

    ``weights``: "final" releases the last step's weights; "average" the run's moving average
    of the weights (``[train] ema_decay``), which must then be in ``model.pt``.
    """
    import torch

    from models.aniso_unet import AnisoUNet, UNetConfig, count_parameters

    ck = torch.load(run_dir / "model.pt", weights_only=False)
    stages = []
    for d in earlier_stages or []:
        h = torch.load(Path(d) / "model.pt", weights_only=False)
        stages.append((h["history"], h["config"]))
    cfg = ck["config"]
    model = AnisoUNet(UNetConfig(**cfg["model"]))
    if weights not in ("final", "average"):
        raise ValueError(f"weights must be 'final' or 'average', got {weights!r}")
    if weights == "average" and "ema" not in ck:
        raise ValueError(f"{run_dir / 'model.pt'} holds no weight average ([train] ema_decay)")
    model.load_state_dict(ck["ema" if weights == "average" else "model"])
    factor = model.config.factor
    profiles = _served_profiles(cfg, name)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / file_name(factor, version, name)
    history = ck["history"]
    normalisation = cfg["data"].get("normalisation", DEFAULT_NORMALISATION)
    metadata: dict[str, object] = {
        "name": name,
        "version": version,
        "input_normalisation": normalisation,
    }
    if profiles:
        metadata["profiles"] = profiles
    if consistency_weight:
        # In the file, not only the manifest: the weight was tuned for these weights.
        metadata["consistency_weight"] = consistency_weight
    if consistency_gain_sigma_mm:
        metadata["consistency_gain_sigma_mm"] = consistency_gain_sigma_mm
    if flip_ensemble > 1:
        metadata["flip_ensemble"] = flip_ensemble
    if detail_weight:
        metadata["detail_weight"] = detail_weight
    if output_shading_degree:
        metadata["output_shading_degree"] = output_shading_degree
    sha = save_weights(model, path, metadata)
    manifest = read_manifest(out_dir)
    inherited: dict = {"stages": [], "training_seconds": 0, "steps": 0}
    if continues is not None:
        inherited = manifest["models"][file_name(factor, continues, name)]
    served: dict[str, object] = {"profiles": profiles}
    if not profiles:
        from models.profile import registry_name

        # the registry's name ("0.36T" -> "T1-0.36T"; "T1-0.36T" stays itself)
        served = {"profile": registry_name(cfg["data"]["profile"])}
    manifest["models"][path.name] = {
        "name": name,
        "factor": factor,
        "version": version,
        **served,
        "input_normalisation": normalisation,
        "sha256": sha,
        "config": cfg,
        "parameters": count_parameters(model),
        "training_seconds": round(
            float(inherited["training_seconds"])
            + sum(float(h.get("seconds", 0.0)) for h, _ in stages)
            + float(history.get("seconds", 0))
        ),
        "steps": int(inherited["steps"])
        + sum(int(h.get("steps_done", len(h["loss"]))) for h, _ in stages)
        + int(history.get("steps_done", len(history["loss"]))),
        "stages": list(inherited["stages"])
        + [
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
    manifest["models"][path.name]["consistency_weight"] = consistency_weight
    if consistency_gain_sigma_mm:
        manifest["models"][path.name]["consistency_gain_sigma_mm"] = consistency_gain_sigma_mm
    if flip_ensemble > 1:
        manifest["models"][path.name]["flip_ensemble"] = flip_ensemble
    if detail_weight:
        manifest["models"][path.name]["detail_weight"] = detail_weight
    if output_shading_degree:
        manifest["models"][path.name]["output_shading_degree"] = output_shading_degree
    manifest["models"][path.name]["weights"] = weights
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    card = model_card(
        manifest["models"][path.name],
        path,
        history,
        hardware or platform.processor() or platform.machine(),
        card_extra,
    )
    path.with_suffix(".md").write_text(card)
    return path


def _served_profiles(cfg: dict, name: str) -> list[str]:
    """The profiles a random-contrast run serves; [] for a T1 run. Each kind is released under
    its own name, so the registry never runs a T1 network for a T2 series or the reverse."""
    random = cfg["data"].get("contrast", "t1") == "random"
    if random and name == MODEL_NAME:
        raise ValueError(
            f"a random-contrast run is not an {MODEL_NAME} network: release it under its own "
            f"name (--name {MC_MODEL_NAME})"
        )
    if not random and name != MODEL_NAME:
        raise ValueError(
            f"a T1 run is released as {MODEL_NAME}; --name {name} is for random-contrast runs"
        )
    return [str(p) for p in cfg["data"]["profiles"]] if random else []


def _data_lines(cfg: dict) -> str:
    """The training data of a run, in the words of its configuration."""
    d = cfg["data"]
    regions = d.get("regions") or {}
    brains = ", ".join(
        f"{n} ({regions[n]} hemisphere)" if n in regions else n for n in d["train_brains"]
    )
    val_regions = d.get("val_regions") or {}
    held = ", ".join(
        f"{n} ({val_regions[n]} hemisphere)" if n in val_regions else n for n in d["val_brains"]
    )
    lines = [
        f"Only brains shipped in PyPI wheels. Training: {brains}.",
        f"Validation during training: {held or 'none'}.",
        "Tissue maps: shipped GM/WM for mni152-2009a, 3-class Gaussian mixture otherwise.",
        f"Every refill draws {d['draws_per_brain']} simulated acquisition(s) per brain, random "
        f"slice axis among {d['slice_axes']}, {d['patches_per_draw']} patches per draw with "
        f"background rejection (>= {d['min_foreground']:.0%} head voxels).",
    ]
    if d.get("random_grid"):
        lines.append(
            f"Each draw is resampled (cubic B-spline, in mm) on a random grid: pixels "
            f"{d['in_plane_mm'][0]}-{d['in_plane_mm'][1]} mm, thin slices "
            f"{d['thin_mm'][0]}-{d['thin_mm'][1]} mm, rotation +-{d['max_rotation_deg']:g} deg, "
            f"scaling +-{d['max_scale']:.0%}, elastic deformation {d['elastic_mm']:g} mm "
            "(models/augment.py)."
        )
    else:
        lines.append("Augmentation: voxel-space affine +-10 deg / +-10 %, bias field, flips.")
    if d.get("contrast") == "random":
        lines.append(
            f"Contrast: every draw renders the brain from its tissue maps with one of "
            f"{', '.join(d['profiles'])} (sequence and field of the profile, "
            f"models/contrast/draw.py), tissue signals jittered +-{d['contrast_jitter']:.0%}, "
            f"{d['random_contrast_probability']:.0%} of draws with random tissue levels; the "
            f"non-brain head from the brain's T1 through gain {d['scalp_gain']} and power "
            f"{d['scalp_gamma']}. Target: the same rendering noise-free (no contrast transfer)."
        )
    if d.get("target_contrast"):
        from models.target import TARGET_GM_WM_RATIO

        lines.append(
            f"Target: the high-field image at the fixed contrast of models/target.py "
            f"(mean GM / mean WM = {TARGET_GM_WM_RATIO})."
        )
    if d.get("shading_target") == "remove" and d.get("shading", 0) > 0:
        lines.append(
            f"Receive-coil shading on the input only (smooth field, log-amplitude drawn from "
            f"U(0, {d['shading']:g}) per draw): the network returns the unshaded anatomy."
        )
    elif d.get("shading", 0) > 0 and d.get("augment", True):
        lines.append(
            f"Smooth shading (log-amplitude {d['shading']:g}) in input and target alike: the "
            "network keeps a coil's shading."
        )
    if d.get("outside_weight", 1.0) < 1.0:
        lines.append(
            f"Loss weight 1 in the brain plus {d['loss_margin_mm']:g} mm, "
            f"{d['outside_weight']:g} elsewhere; {d.get('edge_fraction', 0):.0%} of patches at a "
            "slab edge with inference's reflected padding."
        )
    return "\n".join(lines)


def _flip_ensemble(entry: dict) -> str:
    flips = int(entry.get("flip_ensemble", 1))
    if flips <= 1:
        return "off (one prediction)"
    return (
        f"mean of {flips} mirrored predictions (models.infer.predict_flip_ensemble; recorded in "
        f"the file), {flips}x the inference time"
    )


def _detail(entry: dict) -> str:
    weight = float(entry.get("detail_weight", 0.0))
    if weight <= 0.0:
        return "off"
    return (
        f"blended with weight {weight:g}: through-plane detail learnt from each series' own "
        "in-plane slices (models/smore.py; recorded in the file), 2-4 CPU-minutes a whole-head "
        "series on one thread"
    )


def _output_shading(entry: dict) -> str:
    degree = int(entry.get("output_shading_degree", 0))
    if degree <= 0:
        return "none"
    return (
        f"a degree-{degree} tissue fit of the enhanced volume divided out (pipeline.bias."
        "remove_output_shading; recorded in the file): takes out part of a receive coil's "
        "shading, leaves an unshaded head nearly alone"
    )


def release_again(
    source_version: str,
    version: str,
    out_dir: Path,
    *,
    name: str = MODEL_NAME,
    flip_ensemble: int | None = None,
    consistency_weight: float | None = None,
    consistency_gain_sigma_mm: float | None = None,
    card_extra: str = "",
    detail_weight: float | None = None,
    factors: tuple[int, ...] | None = None,
    output_shading_degree: int | None = None,
) -> list[Path]:
    """Release the unchanged weights of ``source_version`` as ``version`` with other inference
    settings (flip ensemble, back-projection), or with none changed; every factor of that
    release (or ``factors``), with cards.

    ``factors``: a version whose other factor was retrained carries this factor's network over
    unchanged, since the engine loads one version for all its factors.

    Why a new version rather than an edit: a released file's bytes, and so its sha256 in the
    registry and in every derived series' provenance, must never change under a name; the
    inference settings travel in the file, so new settings are a new file. The history
    (stages, CPU time, steps) and configuration are the source's; the card says where it came
    from, and its validation figures are read from the source's card (its run is long gone).
    """
    from safetensors import safe_open

    manifest = read_manifest(out_dir)
    written = []
    for factor in released_factors(out_dir, name):
        if factors is not None and factor not in factors:
            continue
        try:
            source_file, source = released_entry(factor, out_dir, source_version, name)
        except (KeyError, FileNotFoundError):
            continue
        network = load_weights(out_dir / source_file, source["sha256"])
        with safe_open(str(out_dir / source_file), framework="pt") as f:
            metadata = json.loads((f.metadata() or {})["iqt"])
        metadata.pop("config", None)
        # Held-out figures belong to the settings they were measured with: not carried over.
        entry = {k: v for k, v in source.items() if k not in ("file", "metrics")}
        changes: dict[str, object] = {"version": version}
        if flip_ensemble is not None:
            changes["flip_ensemble"] = flip_ensemble
        if consistency_weight is not None:
            changes["consistency_weight"] = consistency_weight
        if consistency_gain_sigma_mm is not None:
            changes["consistency_gain_sigma_mm"] = consistency_gain_sigma_mm
        if detail_weight is not None:
            changes["detail_weight"] = detail_weight
        if output_shading_degree is not None:
            changes["output_shading_degree"] = output_shading_degree
        metadata.update(changes)
        path = out_dir / file_name(factor, version, name)
        sha = save_weights(network, path, metadata)
        entry.update(changes)
        entry.update(
            sha256=sha,
            released=datetime.now(UTC).strftime("%Y-%m-%d"),
            released_from=source_version,
        )
        manifest["models"][path.name] = entry
        old_card = (out_dir / source_file).with_suffix(".md")
        history, hardware = _card_history(old_card.read_text() if old_card.exists() else "")
        settings = ", ".join(f"{k} {v}" for k, v in changes.items() if k != "version")
        note = (
            (
                f"## Release {version}: the weights of {source_version}, other inference "
                f"settings\n\nThe network's weights are exactly those of `{source_file}` (sha256 "
                f"`{source['sha256']}`); only the inference settings recorded in the file differ: "
                f"{settings}."
            )
            if settings
            else (
                f"## Release {version}: the network of {source_version}, unchanged\n\n"
                f"The network's weights and inference settings are exactly those of "
                f"`{source_file}` (sha256 `{source['sha256']}`); only the version recorded in "
                "the file differs, carried over because another factor of this version changed."
            )
        ) + " Training history, data and time are the source's."
        card = model_card(entry, path, history, hardware, "\n\n".join([note, card_extra]))
        path.with_suffix(".md").write_text(card)
        written.append(path)
    if not written:
        raise FileNotFoundError(f"no released {name} {source_version} in {out_dir}")
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return written


def _card_history(card: str) -> tuple[dict, str]:
    """The final validation figures and the hardware a model card states."""
    import re

    history: dict = {}
    found = re.search(r"final ([0-9.]+|nan) dB vs linear\s+interpolation\s+([0-9.]+|nan) dB", card)
    if found:
        # The card's figure is that of the weights it released, final or averaged.
        released = [float(found[1])]
        history = {
            "val_psnr": released,
            "val_psnr_ema": released,
            "val_psnr_linear": [float(found[2])],
        }
    hardware = re.search(r"^\| hardware \| (.+?), \d+ thread", card, re.MULTILINE)
    return history, hardware[1] if hardware else ""


def _back_projection(entry: dict) -> str:
    if entry.get("consistency_correction"):
        return "plain, on"
    weight = float(entry.get("consistency_weight", 0.0))
    sigma = float(entry.get("consistency_gain_sigma_mm", 0.0))
    if weight and sigma:
        return (
            f"contrast-matched, weight {weight:g}, keeping the prediction's smooth gain "
            f"(Gaussian {sigma:g} mm) (models/trust.py; recorded in the file)"
        )
    if weight:
        return f"contrast-matched, weight {weight:g} (models/trust.py; recorded in the file)"
    return "off"


def _purpose(entry: dict, k: int) -> tuple[str, str]:
    """The card's opening paragraph and its simulator paragraph: a T1 network's or a
    contrast-agnostic network's (``profiles``)."""
    from models.profile import load_profile

    d = entry["config"]["data"]
    if not entry.get("profiles"):
        prof = load_profile(d["profile"])
        purpose = (
            "Through-plane super-resolution and low-to-high-field contrast transfer for "
            "T1-weighted brain MRI\n(Image Quality Transfer, ANISO U-Net of Lin et al. 2019), "
            f"trained for the {prof.name} profile:\n{k} thin slices per acquired slice."
        )
        simulator = (
            "Lin et al. 2019 Algorithm 1 (`models/simulate.py`): Gaussian slice profile, "
            f"FWHM = slice\nthickness, a slice every {k} thin voxels, GM rescaled and "
            f"{d['noise']} noise added over the\nwhole field of view so that (SNR_WM, SNR_GM) "
            f"~ N({list(prof.snr_mean)},\n{[list(r) for r in prof.snr_covariance]}) "
            f"({prof.source})."
        )
        return purpose, simulator
    names = list(entry["profiles"])
    purpose = (
        "Through-plane super-resolution and denoising of low-field brain MRI in the acquired\n"
        "contrast: one contrast-agnostic ANISO U-Net (Lin et al. 2019) trained on random-contrast\n"
        f"renderings of tissue maps (SynthSR spirit) for the profiles {', '.join(names)}:\n"
        f"{k} thin slices per acquired slice. No contrast transfer (no high-field T2 or FLAIR\n"
        f"exists to learn it from). Engine `{entry_name(entry)}`; T1-0.36T stays `{MODEL_NAME}`'s."
    )
    rows = "\n".join(
        f"- {name}: {p.sequence.kind if p.sequence else '?'} at {p.field_strength_t:g} T, "
        f"(SNR_WM, SNR_GM) mean {list(p.snr_mean)}, fixed tissue {p.fixed_tissue} ({p.source})"
        for name, p in ((n, load_profile(n)) for n in names)
    )
    simulator = (
        "Lin et al. 2019 Algorithm 1 (`models/simulate.py`) with each draw's profile: Gaussian\n"
        f"slice profile, FWHM = slice thickness, a slice every {k} thin voxels, the non-fixed\n"
        f"tissue rescaled to the SNR pair drawn from the profile and {d['noise']} noise over the\n"
        "whole field of view; the target carries the same tissue rescaling, noise-free.\n\n"
        f"{rows}"
    )
    return purpose, simulator


def model_card(entry: dict, path: Path, history: dict, hardware: str, extra: str) -> str:
    cfg = entry["config"]
    d = cfg["data"]
    name = entry_name(entry)
    k = entry["factor"]
    purpose, simulator = _purpose(entry, k)
    m, t = cfg["model"], cfg["train"]
    arch = (
        f"ANISO U-Net, {m['levels']} levels, {m['base_filters']} base filters (paper: 16), "
        f"normalisation layers: {m.get('norm', 'batch')}"
    )
    opt = f"{t['loss']} / Adam lr {t['lr']}, warm-up {t['warmup_steps']} + cosine"
    stages = "; ".join(
        f"{i + 1}: {st['steps']} steps x {st.get('batch_size', '?')} patches "
        f"{st.get('patch_in_plane', 32)}^2 x {st.get('patch_in_plane', 32) // k} -> "
        f"{st.get('patch_in_plane', 32)}^3, {st['seconds'] / 60:.0f} min, lr {st['lr']}"
        for i, st in enumerate(entry.get("stages", []))
    )
    cpu_hours = entry["training_seconds"] * max(1, int(t.get("threads", 1))) / 3600
    hw = f"{hardware}, {t['threads']} thread(s) per run, 2 cores shared with other jobs"
    average = entry.get("weights") == "average"
    val = history.get("val_psnr_ema" if average else "val_psnr") or [float("nan")]
    kept = (
        f"moving average of the training weights (decay {t.get('ema_decay')})"
        if average
        else "the last step's"
    )
    lin = history.get("val_psnr_linear") or [float("nan")]
    norm = entry.get("input_normalisation", DEFAULT_NORMALISATION)
    ratios = d.get("thickness_ratios") or [d.get("thickness_ratio", 1.0)] * 2
    loader = "" if name == MODEL_NAME else f'name="{name}"'
    return f"""# Model card: {name} k={k} (version {entry["version"]})

{purpose}

- file: `{path.name}` ({path.stat().st_size / 1e6:.1f} MB, conv weights float16)
- sha256: `{entry["sha256"]}`
- engine: `models.iqt_engine.IQTEngine.from_release({loader})` (name `{name}`)
- input: float32 array (slices, rows, cols), slice axis 0, any non-negative intensity scale;
  the engine divides by the `{norm}` scale (`models/normalize.py`) and multiplies back.
- slices: thickness/spacing {ratios[0]}-{ratios[1]} in training (gaps).

## Configuration

| | |
|---|---|
| architecture | {arch}, global residual {m["residual_input"]} |
| parameters | {entry["parameters"]:,} |
| loss / optimiser | {opt} |
| total steps | {entry["steps"]} |
| stages | {stages} |
| inference tile | {entry.get("tile", "default (models.infer.TileSettings)")} |
| back-projection | {_back_projection(entry)} |
| flip ensemble | {_flip_ensemble(entry)} |
| per-series detail | {_detail(entry)} |
| output shading | {_output_shading(entry)} |
| weights released | {kept} |
| training time | {entry["training_seconds"] / 60:.0f} min wall clock, {cpu_hours:.1f} CPU-hours |
| hardware | {hw} |
| seed | {t["seed"]} |

## Data

{_data_lines(cfg)}

## Simulator

{simulator}

## Validation during training

Validation patches (axial, mean SNR), the weights released:
final {val[-1]:.2f} dB vs linear interpolation
{lin[-1]:.2f} dB (PSNR on the normalised scale, peak 1). The figures that matter are the
whole-pipeline ones in models/EVALUATION.md.

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
        "--consistency-weight",
        type=float,
        default=None,
        help="contrast-matched back-projection weight, tuned on training brains "
        "(bench/bench_quality.py --consistency-weight); 0 when not given, or with --again the "
        "source's",
    )
    parser.add_argument(
        "--detail-weight",
        type=float,
        default=None,
        help="blend in through-plane detail learnt from each series' own slices with this "
        "weight (models/smore.py; bench_quality.py --detail-weight); 0 when not given",
    )
    parser.add_argument(
        "--output-shading-degree",
        type=int,
        choices=[0, 1, 2],
        default=None,
        help="fit a smooth shading of this degree to the enhanced volume and divide it out "
        "(pipeline.bias.remove_output_shading; bench_quality.py --output-shading-degree); 0 "
        "when not given, or with --again the source's",
    )
    parser.add_argument(
        "--consistency-gain-sigma-mm",
        type=float,
        default=None,
        help="keep the prediction's smooth gain in the back-projection (Gaussian width in mm; "
        "for networks trained to remove shading); 0 when not given, or with --again the "
        "source's",
    )
    parser.add_argument(
        "--flip-ensemble",
        type=int,
        choices=[1, 2, 4, 8],
        default=None,
        help="mean of this many mirrored predictions at inference (bench_quality.py "
        "--flip-ensemble); 1 when not given",
    )
    parser.add_argument(
        "--again",
        metavar="VERSION",
        default=None,
        help="release the weights of this released VERSION again as --version, with the given "
        "inference settings (run_dir is then not read: pass -)",
    )
    parser.add_argument(
        "--factors",
        type=int,
        nargs="+",
        help="with --again: only these factors (a version whose other factor was retrained "
        "carries this one over unchanged)",
    )
    parser.add_argument(
        "--record-metrics",
        metavar="QUALITY_JSON",
        type=Path,
        nargs="+",
        default=None,
        help="record the held-out figures of these bench/bench_quality.py quality.json files in "
        "the manifest entries of --version, for the registry (run_dir is then not read: pass -)",
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
    parser.add_argument(
        "--continues",
        default=None,
        help="released version the run was initialised from (--init-from); its history counts",
    )
    parser.add_argument("--version", default=VERSION, help="version to release as")
    parser.add_argument(
        "--weights",
        choices=["final", "average"],
        default="final",
        help="the last step's weights, or the run's moving average of them ([train] ema_decay)",
    )
    parser.add_argument(
        "--name",
        default=MODEL_NAME,
        help=f"model to release as: {MODEL_NAME} (T1 runs) or {MC_MODEL_NAME} (random-contrast "
        "runs, [data] contrast = 'random'; the entry lists the run's profiles)",
    )
    args = parser.parse_args()
    extra = args.card_extra.read_text() if args.card_extra else ""
    if args.record_metrics:
        from models.release_metrics import record_metrics

        recorded = record_metrics(
            args.version, args.record_metrics, args.out or weights_dir(), args.name
        )
        for file, metrics in recorded.items():
            print(file, json.dumps({k: v for k, v in metrics.items() if k != "commands"}))
        return
    if args.again:
        for path in release_again(
            args.again,
            args.version,
            args.out or weights_dir(),
            name=args.name,
            flip_ensemble=args.flip_ensemble,
            consistency_weight=args.consistency_weight,
            consistency_gain_sigma_mm=args.consistency_gain_sigma_mm,
            card_extra=extra,
            detail_weight=args.detail_weight,
            factors=tuple(args.factors) if args.factors else None,
            output_shading_degree=args.output_shading_degree,
        ):
            print(path, sha256_file(path))
        return
    tile = json.loads(args.tile) if args.tile else None
    path = release_run(
        args.run_dir,
        args.out or weights_dir(),
        extra,
        args.hardware,
        args.earlier,
        tile,
        args.back_projection,
        args.version,
        consistency_weight=args.consistency_weight or 0.0,
        continues=args.continues,
        consistency_gain_sigma_mm=args.consistency_gain_sigma_mm or 0.0,
        name=args.name,
        flip_ensemble=args.flip_ensemble or 1,
        weights=args.weights,
        detail_weight=args.detail_weight or 0.0,
        output_shading_degree=args.output_shading_degree or 0,
    )
    print(path, sha256_file(path))


if __name__ == "__main__":
    main()
