"""The trained engines ``iqt-t1`` and ``iqt-mc``: the ThroughPlaneEngine the pipeline runs.

``iqt-t1`` is the T1 network of the 0.36 T profile; ``iqt-mc`` one contrast-agnostic network per
factor for the profiles its release lists (``models.release``), trained on random-contrast
renderings. Both are this one class over ANISO U-Net files: what differs travels with each file
(its input normalisation, its back-projection weight, the profiles it was trained for), so the
inference code is one.

Construct it from the released weights with ``IQTEngine.from_release()`` (the newest version of
each factor, or ``version=``; sha256 of each file is checked against
``models/weights/manifest.json``). It takes a float32 (slices, rows, cols) volume on any
non-negative intensity scale: it divides by the scale the network was trained with (recorded
in its weights: ``wm-peak`` from 0.2.0, the white-matter level of the head's core; ``head-p99``
for 0.1.0; ``core-median`` for ``iqt-mc``, the parenchyma level in any contrast; see
``models/normalize.py``), predicts with tiled inference, and multiplies back, so the result is
on the caller's scale.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from models.aniso_unet import AnisoUNet
from models.engine import EngineInfo, EngineResult, low_field_mr
from models.infer import TileSettings, predict_flip_ensemble
from models.normalize import input_scale
from models.release import (
    DEFAULT_NORMALISATION,
    MC_MODEL_NAME,
    MODEL_NAME,
    VERSION,
    file_name,
    load_released,
    released_factors,
    released_profiles,
)
from models.smore import DetailSettings, blend_detail, detail_volume
from models.trust import back_project, consistency_psnr, contrast_matched_back_projection


class IQTEngine:
    """ANISO U-Net super-resolution, one network per factor, with a data-consistency score."""

    def __init__(
        self,
        networks: dict[int, AnisoUNet],
        *,
        version: str = VERSION,
        name: str = MODEL_NAME,
        file_hashes: dict[int, str] | None = None,
        tiles: TileSettings | dict[int, TileSettings] | None = None,
        device: str | None = None,
        threads: int | None = None,
        consistency_correction: bool = False,
        family: str = MODEL_NAME,
        detail: DetailSettings | None = None,
    ) -> None:
        if not networks:
            raise ValueError("IQTEngine needs at least one network")
        for k, net in networks.items():
            if net.config.factor != k:
                raise ValueError(f"network registered for k={k} was built for {net.config.factor}")
        self.networks = {k: net.eval() for k, net in networks.items()}
        self.file_hashes = dict(file_hashes or {})
        # One tile setting per factor: a network works best on tiles like the patches it was
        # trained on, so the release records the tile it was evaluated with.
        if isinstance(tiles, dict):
            self.tiles = {k: tiles.get(k, TileSettings()) for k in self.networks}
        else:
            self.tiles = {k: tiles or TileSettings() for k in self.networks}
        self.device = device
        self.threads = threads
        self.consistency_correction = consistency_correction
        # How the per-series detail network trains, where a file asks for it (detail_weight).
        self.detail = detail or DetailSettings()
        self.file_names = {k: file_name(k, version, family) for k in self.networks}
        self.profiles = tuple(
            sorted({p for net in self.networks.values() for p in getattr(net, "profiles", ())})
        )
        combined = None
        if len(self.file_hashes) == 1 and len(self.networks) == 1:
            # One weights file: its own sha256, so provenance names exactly the file that ran.
            combined = next(iter(self.file_hashes.values()))
        elif self.file_hashes:
            text = "\n".join(
                f"{self.file_names.get(k, file_name(k, version))} {h}"
                for k, h in sorted(self.file_hashes.items())
            )
            combined = hashlib.sha256(text.encode()).hexdigest()
        self._info = EngineInfo(
            name=name,
            version=version,
            weights_sha256=combined,
            description=_description(self.profiles),
            learned=True,
        )

    @classmethod
    def from_release(
        cls,
        directory: str | Path | None = None,
        factors: tuple[int, ...] | None = None,
        version: str | None = None,
        name: str = MODEL_NAME,
        **kwargs: object,
    ) -> IQTEngine:
        """Load the released weights of model ``name`` (``iqt-t1``, or ``iqt-mc``; all factors,
        or ``factors``; the newest version of each, or ``version``), checking each sha256.

        Each factor runs with the tile recorded in its manifest entry (``"tile"``) unless
        ``tiles=`` is given; likewise ``"consistency_correction"`` (back-projection), which the
        release sets only when it improved the held-out metrics.
        """
        d = Path(directory) if directory is not None else None
        wanted = factors or released_factors(d, name)
        if not wanted:
            raise FileNotFoundError(f"no released {name} weights in {d or 'the package'}")
        networks, hashes, tiles, versions = {}, {}, {}, set()
        corrections = set()
        for k in wanted:
            net, entry = load_released(k, d, version, name)
            networks[k] = net
            hashes[k] = entry["sha256"]
            if "tile" in entry:
                tiles[k] = TileSettings(**entry["tile"])
            versions.add(str(entry.get("version", VERSION)))
            corrections.add(bool(entry.get("consistency_correction", False)))
        if len(versions) > 1:
            raise ValueError(
                f"released factors {wanted} come in different versions {sorted(versions)}; "
                "ask for one version"
            )
        kwargs.setdefault("tiles", tiles)
        # Back-projection is on only if every loaded factor was released with it.
        kwargs.setdefault("consistency_correction", corrections == {True})
        return cls(
            networks,
            version=versions.pop() if versions else VERSION,
            name=name,
            family=name,
            file_hashes=hashes,
            **kwargs,  # type: ignore[arg-type]
        )

    @property
    def info(self) -> EngineInfo:
        return self._info

    @property
    def supported_factors(self) -> tuple[int, ...]:
        return tuple(sorted(self.networks))

    def upsample(
        self,
        volume: np.ndarray,
        factor: int,
        slice_thickness_ratio: float = 1.0,
        spacing_mm: tuple[float, float, float] | None = None,
    ) -> EngineResult:
        """Super-resolve ``volume`` (n, rows, cols) to (n * factor, rows, cols).

        ``spacing_mm`` (slice, row, column spacing of the input) lets the input scale measure
        the head's core in millimetres; without it the core is measured as if the
        slices were ``factor`` pixels apart, which is what the network was trained on.
        """
        if factor not in self.networks:
            raise ValueError(
                f"{self._info.name} supports factors {self.supported_factors}, not {factor}"
            )
        v = np.asarray(volume, dtype=np.float32)
        if v.ndim != 3:
            raise ValueError(f"expected (slices, rows, cols), got shape {v.shape}")
        if not np.isfinite(v).all():
            raise ValueError("volume contains NaN or infinite values")
        network = self.networks[factor]
        method = getattr(network, "input_normalisation", DEFAULT_NORMALISATION)
        spacing = spacing_mm or (float(factor), 1.0, 1.0)
        scale = input_scale(method, v, spacing)
        x = v / scale
        tiles = self.tiles[factor]
        # Like its input scale, a file's flip ensemble was chosen for its weights (1: none).
        flips = int(getattr(network, "flip_ensemble", 1))
        pred = predict_flip_ensemble(
            network, x, flips, tiles=tiles, device=self.device, threads=self.threads
        )
        # A release's tuned structure correction travels with its weights file, like its input
        # scale; the engine-wide flag is plain back-projection (kept for older manifests).
        weight = float(getattr(network, "consistency_weight", 0.0))
        gain_sigma = float(getattr(network, "consistency_gain_sigma_mm", 0.0))
        if self.consistency_correction:
            pred = back_project(pred, x, factor, slice_thickness_ratio)
        elif weight > 0.0:
            pred = contrast_matched_back_projection(
                pred,
                x,
                factor,
                slice_thickness_ratio,
                weight,
                gain_sigma_mm=gain_sigma,
                spacing_mm=spacing,
            )
        # Per-series through-plane detail (models/smore.py), blended with the weight tuned for
        # this file (0: off; no release turns it on, models/EVALUATION.md).
        detail_weight = float(getattr(network, "detail_weight", 0.0))
        detail_stats: dict[str, float] = {}
        detail_skipped = ""
        if detail_weight > 0.0:
            try:
                detail, detail_stats = detail_volume(
                    x,
                    factor,
                    slice_thickness_ratio,
                    spacing,
                    self.detail,
                    self.threads,
                    self.device,
                )
            except ValueError as exc:  # nothing to learn from: the prediction alone is sound
                detail_skipped = str(exc)
            else:
                thin = (spacing[0] / factor, spacing[1], spacing[2])
                pred = blend_detail(pred, detail, detail_weight, thin)
        np.maximum(pred, 0.0, out=pred)
        score = consistency_psnr(pred, x, factor, slice_thickness_ratio)
        notes: dict[str, object] = {
            "factor": factor,
            "input_scale": scale,
            "input_normalisation": method,
            "weights_file": self.file_names[factor],
            "weights_file_sha256": self.file_hashes.get(factor),
            "consistency_correction": self.consistency_correction,
            "consistency_weight": weight,
            "consistency_gain_sigma_mm": gain_sigma,
            "tile": [tiles.slices, tiles.rows, tiles.cols],
            "flip_ensemble": flips,
            "detail_weight": detail_weight,
            # What the pipeline should still do to this prediction: models/ knows nothing of
            # the volume's geometry or masks, so the file's tuned output shading fit is asked
            # for here and carried out by pipeline.run (0: nothing).
            "output_shading_degree": int(getattr(network, "output_shading_degree", 0)),
        }
        if detail_stats:
            notes["detail_training"] = {
                "steps": int(detail_stats["steps"]),
                "pairs": int(detail_stats["pairs"]),
                "loss_first": round(detail_stats["loss_first"], 6),
                "loss_last": round(detail_stats["loss_last"], 6),
            }
        if detail_skipped:
            notes["detail_skipped"] = detail_skipped
        if self.profiles:
            notes["trained_profiles"] = list(self.profiles)
        if abs(slice_thickness_ratio - 1.0) > 0.05:
            notes["warning"] = (
                f"trained for contiguous slices; thickness/spacing is {slice_thickness_ratio:.2f}"
            )
        return EngineResult(volume=pred * scale, consistency_psnr_db=score, notes=notes)


def _description(profiles: tuple[str, ...]) -> str:
    hashes = (
        "weights_sha256 is the file's sha256 with one network, else the hash of the "
        "lines '<file> <sha256>' of the files used (each file's hash in the notes)"
    )
    if not profiles:
        return f"ANISO U-Net image quality transfer (Lin et al. 2019), T1, 0.36 T profile; {hashes}"
    return (
        "ANISO U-Net super-resolution and denoising in the acquired contrast, one "
        "contrast-agnostic network trained on random-contrast renderings for the profiles "
        f"{', '.join(profiles)}; {hashes}"
    )


def create_engine() -> IQTEngine:
    """Zero-argument factory for the pipeline's engine registry: released weights, all factors."""
    return IQTEngine.from_release()


def create_mc_engine() -> IQTEngine:
    """The released ``iqt-mc`` weights, all factors (FileNotFoundError when none ship)."""
    return IQTEngine.from_release(name=MC_MODEL_NAME)


def accepts_mc_profile(profile: Mapping[str, object], directory: Path | None = None) -> bool:
    """Whether ``iqt-mc`` fits a series: low-field MR (or unknown field) whose routed profile
    (``profile``) is one its released weights were trained for. T1-0.36T stays ``iqt-t1``'s;
    a series without a routed profile is not guessed at, and with no ``iqt-mc`` weights
    released nothing is accepted (the engine is then simply never chosen)."""
    name = profile.get("profile")
    if name in (None, "", "T1-0.36T") or not low_field_mr(profile):
        return False
    return name in released_profiles(directory, MC_MODEL_NAME)


def accepts_profile(profile: Mapping[str, object]) -> bool:
    """Whether a series fits what the network was trained for: low-field (< 1 T) T1 MR.

    Keys as in ``pipeline.engines.Profile``; a missing field strength is accepted (many
    low-field exports omit it), a missing description is not (T1 is what was trained). When the
    routing rules named the series' profile (``profile``), only ``T1-0.36T`` is accepted: the
    released networks were trained on that profile's simulator alone.
    """
    if str(profile.get("Modality", "MR")).upper() != "MR":
        return False
    if profile.get("profile") not in (None, "", "T1-0.36T"):
        return False
    field = profile.get("MagneticFieldStrength")
    try:
        if field not in (None, "") and float(field) >= 1.0:  # type: ignore[arg-type]
            return False
    except (TypeError, ValueError):
        return False
    return "t1" in str(profile.get("SeriesDescription", "")).lower()
