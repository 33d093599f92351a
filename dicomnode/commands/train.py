"""``dicomnode train CONFIG``: train the ANISO U-Net on simulated low-field draws.

Never run by the node or the tests; a person runs it on a workstation (GPU if present, else CPU
threads from the config). Heavy imports (torch) happen only when the command runs, so the rest
of the CLI stays quick to start.
"""

from __future__ import annotations

import signal
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer


class TrainingStopped(Exception):
    """SIGTERM arrived: the run stops where it is and saves what it has."""


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Raised in the main thread, so the trainer's ``finally`` writes checkpoint.pt and model.pt
    # for the step reached; the default action would lose everything since the last checkpoint.
    raise TrainingStopped


def train(
    config: Annotated[
        Path, typer.Argument(help="Training TOML, e.g. models/configs/t1_k4_reduced.toml.")
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Run directory (checkpoints, curves, log).")
    ] = Path("runs/train"),
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from OUT/checkpoint.pt.")
    ] = False,
    steps: Annotated[int | None, typer.Option("--steps", help="Override train.steps.")] = None,
    threads: Annotated[
        int | None, typer.Option("--threads", help="Override train.threads.")
    ] = None,
    init_from: Annotated[
        Path | None,
        typer.Option(
            "--init-from",
            help="Start from this model.pt or released .safetensors (fresh optimiser).",
        ),
    ] = None,
) -> None:
    """Train one factor's network; writes model.pt, history.json and curves.png into OUT."""
    from models.train import TrainConfig
    from models.train import train as run_training

    if not config.exists():
        raise typer.BadParameter(f"{config} does not exist", param_hint="CONFIG")
    try:
        cfg = TrainConfig.from_toml(config)
    except (ValueError, TypeError) as exc:
        raise typer.BadParameter(str(exc), param_hint="CONFIG") from None
    if steps is not None:
        cfg.train.steps = steps
    if threads is not None:
        cfg.train.threads = threads
    if init_from is not None:
        if not init_from.exists():
            raise typer.BadParameter(f"{init_from} does not exist", param_hint="--init-from")
        cfg.train.init_from = str(init_from)
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        history = run_training(cfg, out, resume=resume)
    except TrainingStopped:
        typer.echo(f"stopped by SIGTERM; model.pt and checkpoint.pt in {out} (--resume continues)")
        raise typer.Exit(143) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    last = history["val_psnr"][-1] if history["val_psnr"] else float("nan")
    typer.echo(
        f"done: {history.get('steps_done')} steps, {history['seconds'] / 60:.1f} min, "
        f"held-out patch PSNR {last:.2f} dB; model in {out / 'model.pt'}"
    )
