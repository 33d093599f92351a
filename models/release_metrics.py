"""Whole-pipeline figures of a release, kept in its manifest entry for the registry.

Why: a PACS administrator choosing between versions (``dicomnode models show``) should see how
each one scored on heads it never trained on, not only its training history; those figures come
from ``bench/bench_quality.py`` after the release exists (the bench runs the released files
through the node's own path), so they are recorded afterwards, into the entry's ``metrics``,
which the registry copies when it registers the file. The weights' bytes and sha256 do not
change.

Only cases that say what the node does by default are kept: the version's own engine with the
inference settings its file records (no bench override), bias correction off (the default), and
brains or hemispheres the version never trained on.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

OVERRIDES = ("--consistency-weight", "--consistency-gain-sigma-mm", "--flip-ensemble")
"""bench_quality.py options that run a file with other inference settings than it records."""

BENCHMARK = (
    "bench/bench_quality.py: simulated 0.36 T series as DICOM through pipeline.run."
    "enhance_series, derived series read back, scored in the brain against cubic B-spline of "
    "the raw input (gains = method - cubic)"
)


def _gain(row: dict, metric: str) -> float:
    return float(row["scores"][metric]) - float(row["cubic"][metric])


def _held_out_rows(quality: dict, name: str, version: str, factor: int) -> list[dict]:
    label = f"{name} {version}"
    return [
        row
        for row in quality["rows"]
        if row["method"].split(",")[0] == label
        and int(row["factor"]) == factor
        and not row["n4"]
        and "seen in training" not in row["seen"]
    ]


def held_out_metrics(qualities: list[dict], name: str, version: str, factor: int) -> dict | None:
    """The summary of every held-out default-path case of ``name`` ``version`` at ``factor``
    in these ``quality.json`` contents; None when they hold none."""
    rows: list[dict] = []
    commands: list[str] = []
    for quality in qualities:
        found = _held_out_rows(quality, name, version, factor)
        if not found:
            continue
        overridden = [o for o in OVERRIDES if o in str(quality.get("command", ""))]
        if overridden:
            raise ValueError(
                f"{quality.get('command')!r} ran the files with {', '.join(overridden)}: its "
                "figures are not those of the settings the release records"
            )
        rows += found
        commands.append(str(quality.get("command", "")))
    if not rows:
        return None
    worst = min(rows, key=lambda row: _gain(row, "psnr"))
    wins = sum(_gain(r, "psnr") > 0 and _gain(r, "ssim") > 0 for r in rows)

    def mean(values: list[float], digits: int) -> float:
        return round(float(np.mean(values)), digits)

    return {
        "benchmark": BENCHMARK,
        "brains": sorted({f"{r['brain']}: {r['seen']}" for r in rows}),
        "cases": len(rows),
        "mean_psnr_gain_db": mean([_gain(r, "psnr") for r in rows], 3),
        "mean_ssim_gain": mean([_gain(r, "ssim") for r in rows], 4),
        "mean_res_psnr_gain_db": mean([_gain(r, "res_psnr") for r in rows], 3),
        "worst_psnr_gain_db": round(_gain(worst, "psnr"), 3),
        "worst_case": worst["case"],
        "beats_cubic_psnr_and_ssim": f"{wins}/{len(rows)}",
        "contrast_error_pct": mean([r["scores"]["contrast_error"] for r in rows], 2),
        "contrast_error_cubic_pct": mean([r["cubic"]["contrast_error"] for r in rows], 2),
        "commands": commands,
    }


def record_metrics(
    version: str, quality_files: list[Path], out_dir: Path, name: str
) -> dict[str, dict]:
    """Write the held-out figures of ``quality_files`` into the manifest entry of every factor
    of ``name`` ``version`` they cover; returns {file name: metrics}. A factor they do not
    cover keeps its entry as it is."""
    from models.release import read_manifest, released_entries

    qualities = [json.loads(Path(f).read_text(encoding="utf-8")) for f in quality_files]
    manifest = read_manifest(out_dir)
    written: dict[str, dict] = {}
    for file, entry in released_entries(out_dir, name).items():
        if entry["version"] != version:
            continue
        metrics = held_out_metrics(qualities, name, version, int(entry["factor"]))
        if metrics is not None:
            manifest["models"][file]["metrics"] = metrics
            written[file] = metrics
    if not written:
        raise ValueError(
            f"no held-out case of {name} {version} with N4 off in "
            f"{', '.join(str(f) for f in quality_files)}"
        )
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return written
