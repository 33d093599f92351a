"""Random-contrast heads for training one contrast-agnostic network (``iqt-mc``).

Why: no high-field T2 or FLAIR head ships in any package we may use, so a network for those
profiles (and for 64 mT T1) learns from heads rendered from their tissue maps, in the spirit of
SynthSR (Iglesias et al. 2023): each training draw picks one of the listed profiles and renders
the brain with that profile's sequence at its field (``models.contrast.synthesis``), every
tissue signal jittered (scanners, protocols and the relaxation table itself all vary), and now
and then with fully random tissue intensities, so the network learns to sharpen edges and
remove noise whatever the contrast rather than one contrast's look.

The maps cover the brain only (GM, WM, CSF). The rest of the head (scalp, skull, marrow,
muscle) is taken from the brain's own T1 image through a random power law and gain: a whole
head with scalp is what a scanner sends, and a network that never saw scalp makes artefacts at
it; its appearance differs between contrasts (fat is bright on T1 and on FSE T2), which the
random transform covers without a model of each extracerebral tissue.

The target is the same rendering, noise-free at full resolution: this network super-resolves
and denoises in the acquired contrast, it does not transfer contrast (no high-field T2 or FLAIR
exists to transfer to).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.contrast.synthesis import TISSUES, mix, tissue_signals
from models.profile import FieldProfile
from models.simulate import TissueMaps

RANDOM_LEVELS = (0.1, 2.0)
"""Range of a fully random tissue level (white matter of a rendered profile is 1)."""


@dataclass(frozen=True)
class ContrastDraw:
    """How each training draw picks its contrast.

    ``jitter``: each tissue signal is multiplied by U(1 - j, 1 + j). ``random_probability``:
    the chance that the tissue levels are instead drawn uniformly from ``RANDOM_LEVELS`` (the
    SynthSR draw); the SNR draw then keeps their order too (``models.patches``). ``scalp_gain``
    and ``scalp_gamma``: ranges of the transform ``gain * (T1 / T1 of white matter) ** gamma``
    that makes the non-brain head.
    """

    profiles: tuple[FieldProfile, ...]
    jitter: float = 0.15
    random_probability: float = 0.1
    scalp_gain: tuple[float, float] = (0.3, 1.5)
    scalp_gamma: tuple[float, float] = (0.6, 1.6)

    def __post_init__(self) -> None:
        if not self.profiles:
            raise ValueError("random contrast needs at least one profile")
        for profile in self.profiles:
            if profile.sequence is None:
                raise ValueError(f"profile {profile.name} has no [sequence] to render")
        if not 0.0 <= self.jitter < 1.0:
            raise ValueError(f"contrast jitter must be in [0, 1), not {self.jitter}")
        if not 0.0 <= self.random_probability <= 1.0:
            raise ValueError(f"random_probability must be in [0, 1], not {self.random_probability}")
        for name, (lo, hi) in (("scalp_gain", self.scalp_gain), ("scalp_gamma", self.scalp_gamma)):
            if not 0.0 < lo <= hi:
                raise ValueError(f"{name} must be an increasing pair of positive numbers")


@dataclass(frozen=True)
class Contrast:
    """One draw's contrast: the profile simulated, the tissue levels rendered (white matter of
    the profile's own rendering = 1) and the non-brain transform."""

    profile: FieldProfile
    levels: dict[str, float]
    random: bool = False
    scalp_gain: float = 1.0
    scalp_gamma: float = 1.0


def profile_levels(profile: FieldProfile) -> dict[str, float]:
    """Each tissue's signal under the profile's sequence at its field, white matter = 1."""
    if profile.sequence is None:
        raise ValueError(f"profile {profile.name} has no [sequence] to render")
    signals = tissue_signals(profile.sequence, profile.field_strength_t)
    wm = max(signals["wm"], 1e-12)
    return {tissue: float(signals[tissue] / wm) for tissue in TISSUES}


def draw_contrast(
    draw: ContrastDraw,
    rng: np.random.Generator,
    *,
    augment: bool = True,
    profile: FieldProfile | None = None,
) -> Contrast:
    """One draw's contrast; ``profile`` fixes the profile (validation), ``augment=False`` gives
    the profile's own levels and the T1's own non-brain head (gain and power 1)."""
    if profile is None:
        profile = draw.profiles[int(rng.integers(len(draw.profiles)))]
    levels = profile_levels(profile)
    if not augment:
        return Contrast(profile, levels)
    random = bool(rng.random() < draw.random_probability)
    if random:
        levels = {t: float(rng.uniform(*RANDOM_LEVELS)) for t in TISSUES}
    else:
        j = draw.jitter
        levels = {t: v * float(rng.uniform(1.0 - j, 1.0 + j)) for t, v in levels.items()}
    gain = float(rng.uniform(*draw.scalp_gain))
    gamma = float(rng.uniform(*draw.scalp_gamma))
    return Contrast(profile, levels, random, gain, gamma)


def render_head(t1: np.ndarray, maps: TissueMaps, contrast: Contrast) -> np.ndarray:
    """The head in ``contrast``: tissue levels where the maps cover the brain, the T1's own
    non-brain head through the random power law elsewhere (partial cover blends the two)."""
    t1 = np.clip(np.asarray(t1, np.float32), 0.0, None)
    wm = maps.wm > 0.5
    reference = float(t1[wm].mean()) if wm.sum() >= 10 else float(np.percentile(t1, 99))
    relative = t1 / np.float32(max(reference, 1e-12))
    scalp = np.float32(contrast.scalp_gain) * relative ** np.float32(contrast.scalp_gamma)
    return mix(maps, contrast.levels, scalp.astype(np.float32, copy=False))
