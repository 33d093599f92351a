"""Contrast synthesis (models.contrast) and the contrast profiles (models/profiles/*.toml)."""

from __future__ import annotations

import tomllib
from importlib import resources

import numpy as np
import pytest

from models.contrast.signal import Sequence, null_inversion_time, signal
from models.contrast.synthesis import (
    fields,
    gm_wm_ratio,
    pd_sequence,
    relaxation,
    relaxation_table,
    render,
)
from models.profile import PROFILE_NAMES, load_profile
from models.simulate import TissueMaps, simulate_low_field


def _pure_maps() -> TissueMaps:
    """Three pure-tissue slabs (GM, WM, CSF) and one empty slab (air), 4 slices each."""
    shape = (16, 8, 8)
    gm, wm, csf = (np.zeros(shape, np.float32) for _ in range(3))
    gm[0:4], wm[4:8], csf[8:12] = 1.0, 1.0, 1.0
    return TissueMaps(gm=gm, wm=wm, csf=csf)


def _means(image: np.ndarray) -> dict[str, float]:
    return {
        "gm": float(image[0:4].mean()),
        "wm": float(image[4:8].mean()),
        "csf": float(image[8:12].mean()),
        "air": float(image[12:].mean()),
    }


def test_every_relaxation_entry_names_its_source() -> None:
    table = relaxation_table()
    assert {(r.name, r.field_t) for r in table} == {
        (t, f) for t in ("gm", "wm", "csf") for f in (0.064, 0.36)
    }
    for r in table:
        assert r.source.strip(), r
        assert 0 < r.pd <= 1 and r.t2_ms < r.t1_ms
    # T1 disperses with field: shorter at 64 mT than at 0.36 T for brain tissue
    for tissue in ("gm", "wm"):
        assert relaxation(tissue, 0.064).t1_ms < relaxation(tissue, 0.36).t1_ms
    assert fields() == (0.064, 0.36)
    with pytest.raises(ValueError, match="no relaxation times near"):
        relaxation("wm", 1.5)


@pytest.mark.parametrize("field_t", [0.064, 0.36])
@pytest.mark.parametrize("contrast", ["T1", "T2", "FLAIR", "PD"])
def test_rendered_contrast_orders_tissues_as_the_sequence_should(contrast, field_t) -> None:
    sequences = {
        "T1": load_profile(f"T1-{'64mT' if field_t < 0.1 else '0.36T'}").sequence,
        "T2": load_profile(f"T2-{'64mT' if field_t < 0.1 else '0.36T'}").sequence,
        "FLAIR": load_profile(f"FLAIR-{'64mT' if field_t < 0.1 else '0.36T'}").sequence,
        "PD": pd_sequence(),
    }
    m = _means(render(_pure_maps(), sequences[contrast], field_t))
    assert m["wm"] == pytest.approx(1.0)
    assert m["air"] == 0.0
    if contrast == "T1":
        assert m["wm"] > m["gm"] > m["csf"]
    elif contrast == "T2":
        assert m["csf"] > m["gm"] > m["wm"]
    elif contrast == "FLAIR":
        assert m["gm"] > m["wm"] > m["csf"]
        assert m["csf"] < 0.25  # fluid attenuated
    else:
        # proton density weighting: GM brighter than WM, GM/WM follows PD, not relaxation;
        # CSF (T1 of seconds) is not fully recovered at clinical TR, so near WM/GM
        assert m["gm"] > m["wm"]
        assert 0.8 < m["csf"] < 1.2
        assert m["gm"] / m["wm"] == pytest.approx(0.80 / 0.70, rel=0.1)


def test_partial_volume_mixes_signals_linearly() -> None:
    seq = Sequence("spin-echo", 4000.0, 110.0)
    maps = TissueMaps(
        gm=np.full((2, 2, 2), 0.5, np.float32),
        wm=np.full((2, 2, 2), 0.5, np.float32),
        csf=np.zeros((2, 2, 2), np.float32),
    )
    assert float(render(maps, seq, 0.36).mean()) == pytest.approx(
        0.5 * (1.0 + gm_wm_ratio(seq, 0.36))
    )


def test_signal_equations_by_hand() -> None:
    se = Sequence("spin-echo", 500.0, 15.0)
    assert signal(se, 0.7, 360.0, 85.0) == pytest.approx(
        0.7 * (1 - np.exp(-500 / 360)) * np.exp(-15 / 85)
    )
    ir = Sequence("inversion-recovery", 7000.0, 110.0, ti_ms=null_inversion_time(4000, 7000))
    assert signal(ir, 1.0, 4000.0, 1800.0) == pytest.approx(0.0, abs=1e-9)
    gre = Sequence("gradient-echo", 30.0, 5.0, flip_deg=90.0)
    assert signal(gre, 1.0, 300.0, 100.0) == pytest.approx(
        (1 - np.exp(-30 / 300)) * np.exp(-5 / 100)
    )
    with pytest.raises(ValueError):
        Sequence("inversion-recovery", 1000.0, 10.0)
    with pytest.raises(ValueError):
        Sequence("bssfp", 5.0, 2.0)


@pytest.mark.parametrize("name", PROFILE_NAMES)
def test_profile_contrast_agrees_with_its_signal_equations(name) -> None:
    """The SNR pair's GM/WM ratio is the contrast the profile's sequence gives: profile files
    and relaxation data cannot drift apart (T1 at 0.36 T: Lin et al.'s measured ratio, which
    the 0.36 T relaxation times were calibrated on)."""
    p = load_profile(name)
    assert p.sequence is not None and p.geometry is not None
    ratio = p.snr_mean[1] / p.snr_mean[0]
    assert ratio == pytest.approx(gm_wm_ratio(p.sequence, p.field_strength_t), rel=0.03)
    contrast, field = name.split("-")
    assert p.contrast == contrast
    assert p.field_strength_t == pytest.approx(0.36 if field == "0.36T" else 0.064)
    assert p.fixed_tissue == ("gm" if contrast == "FLAIR" else "wm")
    # 64 mT: 1.5 mm pixels, 5 mm slices; 0.36 T: 0.9 mm pixels, 5 mm slices every 6 mm
    assert p.geometry.slice_spacing_mm / p.geometry.pixel_mm >= 3


@pytest.mark.parametrize(
    "file",
    sorted(
        f.name for f in resources.files("models.profiles").iterdir() if f.name.endswith(".toml")
    ),
)
def test_every_profile_number_has_a_source(file) -> None:
    data = tomllib.loads(resources.files("models.profiles").joinpath(file).read_text())
    assert data["source"].strip()
    for section in ("sequence", "geometry"):
        if section in data:
            assert data[section]["source"].strip(), (file, section)
            assert isinstance(data[section]["estimate"], bool)


def test_flair_simulation_holds_grey_matter_fixed() -> None:
    rng = np.random.default_rng(0)
    maps = TissueMaps(gm=np.zeros((32, 16, 16), np.float32), wm=np.zeros((32, 16, 16), np.float32))
    maps.gm[:, :8], maps.wm[:, 8:] = 1.0, 1.0
    image = np.where(maps.gm > 0.5, 1.3, 1.0).astype(np.float32)
    flair = load_profile("FLAIR-64mT")
    sim = simulate_low_field(image, maps, 4, flair, rng, snr=(8.0, 11.4))
    gm_mean = float(sim.low_field[:, :8].mean())
    assert gm_mean == pytest.approx(1.3, rel=0.02)  # grey matter untouched
    assert sim.sigma == pytest.approx(1.3 / 11.4, rel=1e-3)
    assert float(sim.low_field[:, 8:].mean()) / sim.sigma == pytest.approx(8.0, rel=0.05)
    t2 = load_profile("T2-64mT")
    sim = simulate_low_field(image, maps, 4, t2, rng, snr=(12.0, 17.7))
    assert float(sim.low_field[:, 8:].mean()) == pytest.approx(1.0, rel=0.02)  # WM fixed
