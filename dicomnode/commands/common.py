"""Helpers shared by the CLI commands: configuration loading with readable errors, output."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from dicomnode.config import Config, ConfigError, config_path, load_config

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Configuration file (default: $DICOMNODE_CONFIG, else /etc/dicomnode/dicomnode.toml).",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="One JSON object per line.")]

console = Console()
err_console = Console(stderr=True)


def load_or_exit(explicit: Path | None) -> Config:
    path = config_path(explicit)
    try:
        return load_config(path)
    except ConfigError as exc:
        err_console.print(f"[red]{exc}[/red]", highlight=False)
        raise typer.Exit(2) from None


def fail(message: str, code: int = 1) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {message}", highlight=False)
    return typer.Exit(code)


def _plain(value: object) -> object:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return value


def emit(
    rows: Iterable[Mapping[str, object]], as_json: bool, title: str, columns: list[str]
) -> None:
    rows = list(rows)
    if as_json:
        for row in rows:
            typer.echo(json.dumps({k: _plain(v) for k, v in row.items()}, default=str))
        return
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*[_cell(row.get(c)) for c in columns])
    console.print(table)


def emit_one(row: Mapping[str, object], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps({k: _plain(v) for k, v in row.items()}, default=str))
        return
    for key, value in row.items():
        if isinstance(value, list) and value and isinstance(value[0], Mapping):
            console.print(f"[bold]{key}[/bold]:")
            for item in value:
                console.print("  " + "  ".join(f"{k}={_cell(v)}" for k, v in item.items()))
        else:
            console.print(f"[bold]{key}[/bold]: {_cell(value)}", highlight=False)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)
