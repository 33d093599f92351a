"""End to end: the instances of one series in, the instances of the derived series out.

This is what the node's job runner calls (no network, no database): it records
``result.metadata()`` with the job and hands ``result.datasets`` to delivery. Every refusal is a
``pipeline.errors.PipelineError`` with a ``reason`` code to store as the job's failure reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset

from models.engine import EngineInfo, ThroughPlaneEngine
from pipeline.bias import correct_bias, describe_correction, remove_output_shading
from pipeline.derive import Provenance, derive_series
from pipeline.engines import Profile, choose_engine
from pipeline.enhance import enhance_volume
from pipeline.intensity import Normalisation, equalise_slices
from pipeline.mask import head_mask
from pipeline.settings import PipelineSettings
from pipeline.volume import SeriesVolume, read_volume

log = logging.getLogger(__name__)

STAGES = ("volume", "bias", "equalise", "engine", "shading", "derive")
"""Stage names passed to the progress callback, in order (``equalise`` only when enabled,
``shading`` only when the engine's weights file asks for it)."""

ProgressCallback = Callable[[str], None]


@dataclass
class EnhancementResult:
    datasets: list[Dataset]
    series_instance_uid: str
    source_series_instance_uid: str
    engine: EngineInfo
    engine_choice: str
    factor: int
    volume: SeriesVolume
    output_image: sitk.Image
    normalisation: Normalisation
    timings: dict[str, float] = field(default_factory=dict)
    consistency_psnr_db: float | None = None
    needs_review: bool = False
    notes: dict[str, object] = field(default_factory=dict)

    def metadata(self) -> dict[str, object]:
        """JSON-ready summary for the job record (UIDs only, no patient identity)."""
        return {
            "series_instance_uid": self.series_instance_uid,
            "source_series_instance_uid": self.source_series_instance_uid,
            "instances": len(self.datasets),
            "engine": self.engine.name,
            "engine_version": self.engine.version,
            "weights_sha256": self.engine.weights_sha256,
            "engine_choice": self.engine_choice,
            "factor": self.factor,
            "input_size": list(self.volume.image.GetSize()),
            "input_spacing": list(self.volume.image.GetSpacing()),
            "output_size": list(self.output_image.GetSize()),
            "output_spacing": list(self.output_image.GetSpacing()),
            "normalisation": {
                "method": self.normalisation.method,
                "offset": self.normalisation.offset,
                "scale": self.normalisation.scale,
            },
            "consistency_psnr_db": self.consistency_psnr_db,
            "needs_review": self.needs_review,
            "timings_s": dict(self.timings),
        }


def series_profile(datasets: Sequence[Dataset]) -> dict[str, object]:
    """The attributes engines use to accept a series (see ``pipeline.engines.Profile``)."""
    first = datasets[0] if datasets else Dataset()
    return {
        "Modality": str(first.get("Modality", "")),
        "SeriesDescription": str(first.get("SeriesDescription", "")),
        "MagneticFieldStrength": first.get("MagneticFieldStrength"),
    }


def enhance_series(
    datasets: Sequence[Dataset],
    settings: PipelineSettings | None = None,
    engine: ThroughPlaneEngine | str | None = None,
    *,
    progress: ProgressCallback | None = None,
    volume: SeriesVolume | None = None,
    profile_name: str | None = None,
) -> EnhancementResult:
    """Volume -> N4 -> (equalise) -> engine -> (output shading) -> derived instances, timed.

    ``volume``: the caller already built it from ``datasets`` (the node's worker does, to choose
    the model by slice geometry), so the pixel data is not decoded a second time.
    ``profile_name``: the series' profile as the routing rules picked it (``T2-64mT``); engines
    see it as ``profile`` when one is chosen automatically, so a model trained for another
    profile declines the series.
    """
    settings = settings or PipelineSettings()
    timings: dict[str, float] = {}

    def stage(name: str) -> float:
        if progress is not None:
            progress(name)
        return time.perf_counter()

    start = stage("volume")
    if volume is None:
        volume = read_volume(datasets, settings.volume)
    profile: Profile = {
        **series_profile(datasets),
        "slice_spacing": volume.slice_spacing,
        "pixel_spacing": min(volume.image.GetSpacing()[:2]),
    }
    if profile_name:
        profile = {**profile, "profile": profile_name}
    if isinstance(engine, str) or engine is None:
        chosen, choice = choose_engine(engine, profile)
    else:
        chosen, choice = engine, f"engine {engine.info.name!r} given by the caller"
    timings["volume"] = time.perf_counter() - start

    start = stage("bias")
    image = volume.image
    if settings.n4.enabled:
        bias = correct_bias(image, settings.n4)
        image, mask = bias.corrected, bias.mask
        n4 = describe_correction(volume.image, settings.n4)
    else:
        mask = head_mask(image)
        n4 = "no bias correction"
    timings["bias"] = time.perf_counter() - start

    if settings.intensity.slice_equalisation:
        start = stage("equalise")
        image = equalise_slices(image, settings.intensity)
        timings["equalise"] = time.perf_counter() - start

    start = stage("engine")
    enhanced = enhance_volume(
        image,
        chosen,
        mask=mask,
        thickness_ratio=volume.thickness_ratio,
        enhance=settings.enhance,
        intensity=settings.intensity,
    )
    timings["engine"] = time.perf_counter() - start

    output = enhanced.image
    notes = dict(enhanced.notes)
    postprocessing = ""
    degree = int(notes.get("output_shading_degree", 0) or 0)
    if degree > 0:
        start = stage("shading")
        shading = remove_output_shading(output, degree)
        output = shading.corrected
        inside = sitk.GetArrayViewFromImage(shading.mask) > 0
        found = np.exp(sitk.GetArrayViewFromImage(shading.log_field)[inside])
        spread = float(np.percentile(np.abs(found - 1.0), 95)) if found.size else 0.0
        notes["output_shading_p95"] = round(spread, 4)
        postprocessing = f"; output shading degree {degree} removed (p95 {spread:.1%})"
        timings["shading"] = time.perf_counter() - start

    start = stage("derive")
    preprocessing = (
        f"{n4}; normalisation {enhanced.normalisation.method}; slice equalisation "
        f"{'on' if settings.intensity.slice_equalisation else 'off'}{postprocessing}"
    )
    score = enhanced.consistency_psnr_db
    threshold = settings.output.review_below_db
    needs_review = score is not None and threshold is not None and score < threshold
    provenance = Provenance(
        enhanced.engine,
        enhanced.factor,
        preprocessing,
        volume.slice_spacing,
        consistency_psnr_db=score,
        needs_review=needs_review,
    )
    derived = derive_series(output, volume, provenance, settings)
    timings["derive"] = time.perf_counter() - start
    log.info(
        "enhanced series %s -> %s with %s x%d in %.1f s",
        volume.series_instance_uid,
        derived[0].SeriesInstanceUID,
        enhanced.engine.name,
        enhanced.factor,
        sum(timings.values()),
    )
    return EnhancementResult(
        datasets=derived,
        series_instance_uid=str(derived[0].SeriesInstanceUID),
        source_series_instance_uid=volume.series_instance_uid,
        engine=enhanced.engine,
        engine_choice=choice,
        factor=enhanced.factor,
        volume=volume,
        output_image=output,
        normalisation=enhanced.normalisation,
        timings=timings,
        consistency_psnr_db=enhanced.consistency_psnr_db,
        needs_review=needs_review,
        notes=notes,
    )
