"""``dicomnode enhance``: run the pipeline on files, without the node (no network, no database).

For a radiographer or physicist trying the enhancement on an exported series, and for the
acceptance checks. Pipeline settings come from the ``[pipeline]`` table of ``--config`` when
given (the same table the node reads), else defaults. Errors print their reason code and the
offending instances and exit with status 2; nothing prints patient names or IDs.
"""

from __future__ import annotations

import logging
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from pipeline.errors import PipelineError
from pipeline.settings import PipelineSettings

EXIT_REFUSED = 2

_STAGE_TEXT = {
    "read": "reading instances",
    "volume": "building the volume",
    "bias": "bias-field correction (N4 or tissue-fit)",
    "equalise": "slice equalisation",
    "engine": "super-resolving through-plane",
    "shading": "removing coil shading from the enhanced volume",
    "derive": "building the derived series",
    "write": "writing files",
    "preview": "writing the preview",
}


class OutputFormat(StrEnum):
    sc = "sc"
    mr = "mr"


def _settings(config: Path | None, output_format: OutputFormat) -> PipelineSettings:
    data: dict[str, object] = {}
    if config is not None:
        with config.open("rb") as handle:
            data = dict(tomllib.load(handle).get("pipeline", {}))
    output = dict(data.get("output", {}) or {})  # type: ignore[call-overload]
    output["format"] = output_format.value
    data["output"] = output
    return PipelineSettings.model_validate(data)


def _pick_profile(datasets: list, config: Path | None) -> tuple[str | None, str]:
    """The series' profile as the node would pick it: the first ``enhance`` rule of
    ``--config`` that holds (its ``profile``, else ``[runner] default_profile``), or without a
    configuration the built-in profile rules (``dicomnode.receive.profile_rules``); with the
    reason in words. No rule holding is no refusal here: the engine is chosen without one."""
    from dicomnode.receive.profile_rules import pick_profile

    if not datasets:
        return None, "no instances"
    rules, default, where = None, None, "built-in profile rules"
    if config is not None:
        from dicomnode.config import ConfigError, load_config

        try:
            loaded = load_config(config)
        except ConfigError:
            loaded = None  # the [pipeline] table was read already; rules are optional here
        if loaded is not None:
            rules, default, where = loaded.rules, loaded.runner.default_profile, str(config)
    profile, rule = pick_profile(datasets[0], rules)
    if rule is None:
        return None, f"no enhance rule of the {where} holds for this series"
    if profile is None:
        return default, f"rule {rule!r} of the {where} (the default profile)"
    return profile, f"rule {rule!r} of the {where}"


def enhance(
    inputs: Annotated[
        list[Path], typer.Argument(help="DICOM files and/or folders holding ONE series.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder to write the derived series into.")],
    model: Annotated[
        str | None,
        typer.Option("--model", help="Engine name (e.g. bspline); default: best available."),
    ] = None,
    output_format: Annotated[
        OutputFormat,
        typer.Option("--format", help="sc: Secondary Capture with plane geometry; mr: derived MR."),
    ] = OutputFormat.sc,
    preview: Annotated[
        Path | None,
        typer.Option("--preview", help="Also write a PNG comparing input and output (3 planes)."),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="TOML file whose \\[pipeline] table sets the pipeline."),
    ] = None,
) -> None:
    """Enhance one low-field MR series through-plane and write it as a derived series."""
    console = Console(stderr=True)
    logging.basicConfig(level=logging.WARNING)
    try:
        settings = _settings(config, output_format)
    except (OSError, tomllib.TOMLDecodeError, ValidationError) as exc:
        console.print("error", style="bold red", end=" ")
        console.print(f"[config] {exc}", markup=False, highlight=False)
        raise typer.Exit(EXIT_REFUSED) from exc

    from dicomnode.identity import stamp
    from pipeline.io import read_series, write_datasets
    from pipeline.run import enhance_series

    # "shading" runs only when the engine's weights file asks for it; the bar skips it otherwise
    steps = ["read", "volume", "bias", "engine", "shading", "derive", "write"]
    if settings.intensity.slice_equalisation:
        steps.insert(3, "equalise")
    if preview is not None:
        steps.append("preview")
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    try:
        with progress:
            task = progress.add_task("starting", total=len(steps))

            def advance(stage: str) -> None:
                done = steps.index(stage) if stage in steps else 0
                progress.update(task, completed=done, description=_STAGE_TEXT.get(stage, stage))

            advance("read")
            datasets = read_series(inputs)
            profile, why = _pick_profile(datasets, config)
            console.print(f"profile {profile or 'none'}: {why}", markup=False, highlight=False)
            result = enhance_series(
                datasets, settings, model, progress=advance, profile_name=profile
            )
            advance("write")
            for ds in result.datasets:
                stamp(ds)
            paths = write_datasets(result.datasets, out)
            if preview is not None:
                advance("preview")
                from pipeline.preview import write_preview

                write_preview(
                    result.volume.image,
                    result.output_image,
                    preview,
                    f"{result.engine.name} {result.engine.version} x{result.factor}",
                )
            progress.update(task, completed=len(steps), description="done")
    except PipelineError as exc:
        console.print("error", style="bold red", end=" ")
        console.print(str(exc), markup=False, highlight=False)
        raise typer.Exit(EXIT_REFUSED) from exc
    console.print(
        f"{result.engine_choice}: {result.engine.name} {result.engine.version}, factor "
        f"x{result.factor}; wrote {len(paths)} instances of series {result.series_instance_uid} "
        f"to {out}" + (f"; preview {preview}" if preview else ""),
        markup=False,
        highlight=False,
    )
