"""``dicomnode models list|import|show|activate|rollback|verify|remove``: the model registry.

Each command opens the node's database (migrating it first, so the registry tables exist even
before the node was upgraded and restarted) and registers the released weights shipped with the
software, so that they are listed and active with no manual step. Changes are committed at the
end of the command; the node's job runner reads the active model at each job, so an activation
or rollback applies to the next job without a restart.
"""

from __future__ import annotations

import datetime as dt
import getpass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from sqlalchemy import or_, select

from db.models import ModelActivation, ModelVersion
from dicomnode.commands.common import (
    ConfigOption,
    JsonOption,
    console,
    emit,
    emit_one,
    err_console,
    fail,
    load_or_exit,
)

if TYPE_CHECKING:
    from db.session import Database
    from dicomnode.config import Config

app = typer.Typer(
    help="Registered model versions: import, activate, roll back, verify.", no_args_is_help=True
)

LIST_COLUMNS = ["id", "model", "profile", "k", "state", "source", "activated"]
VERIFY_COLUMNS = ["id", "name", "version", "profile", "factor", "state", "ok", "problem"]

ByOption = Annotated[
    str | None,
    typer.Option("--by", help="Who is doing this, for the audit trail (default: your login)."),
]
ReasonOption = Annotated[str | None, typer.Option("--reason", help="Recorded with the activation.")]
OnlyProfileOption = Annotated[
    str | None,
    typer.Option(
        "--profile",
        help="Only the rows of this profile (a contrast-agnostic version such as iqt-mc serves "
        "several, each activated on its own).",
    ),
]


def _open(config_file: Path | None) -> tuple[Config, Database]:
    """The configuration and the migrated database, with released models registered.

    A broken installed package (a released file missing or altered) must not lock the
    administrator out of the registry, e.g. out of a rollback, so it is a warning here (the
    node logs it as an error at start and keeps running the versions already registered).
    """
    from db.migrate import upgrade
    from dicomnode.node import open_database
    from dicomnode.process.registry import RegistryError, sync_released

    config = load_or_exit(config_file)
    database = open_database(config)
    upgrade(database)
    try:
        with database.session() as session:
            sync_released(session, config.node.data_dir)
    except (RegistryError, OSError) as exc:
        err_console.print(
            f"[yellow]warning:[/yellow] released models not registered: {exc}", highlight=False
        )
    return config, database


def _by(value: str | None) -> str:
    if value:
        return value
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name (container without a passwd entry)
        return "unknown"


def _table_row(row: dict[str, object]) -> dict[str, object]:
    """A row that fits an 80-column terminal (sha256 and path are in ``--json`` and ``show``)."""
    at = row["activated_at"]
    activated = None
    if isinstance(at, dt.datetime):
        activated = f"{at:%Y-%m-%d %H:%M} by {row['activated_by'] or '?'}"
    return {
        "id": row["id"],
        "model": f"{row['name']}@{row['version']}",
        "profile": row["profile"],
        "k": row["factor"],
        "state": row["state"],
        "source": row["source"],
        "activated": activated,
    }


@app.command("list")
def list_models(
    config: ConfigOption = None,
    as_json: JsonOption = False,
    profile: Annotated[str | None, typer.Option(help="Only this profile.")] = None,
) -> None:
    """List registered model versions (removed ones are shown as 'removed')."""
    from dicomnode.process.registry import as_dict

    _, database = _open(config)
    with database.session() as session:
        query = select(ModelVersion).order_by(
            ModelVersion.profile, ModelVersion.factor, ModelVersion.id
        )
        if profile:
            query = query.where(ModelVersion.profile == profile)
        rows = [as_dict(row) for row in session.scalars(query)]
    database.dispose()
    if as_json:
        emit(rows, True, "Models", LIST_COLUMNS)
    else:
        emit([_table_row(r) for r in rows], False, "Models", LIST_COLUMNS)


@app.command("import")
def import_command(
    weights: Annotated[Path, typer.Argument(help="Weights file (.safetensors).")],
    config: ConfigOption = None,
    card: Annotated[
        Path | None,
        typer.Option(help="Model card (markdown); default: WEIGHTS with .md beside it."),
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Model name (default: from the file's metadata).")
    ] = None,
    version: Annotated[
        str | None, typer.Option(help="Version (default: from the file's metadata).")
    ] = None,
    profile: Annotated[
        str | None,
        typer.Option(
            help="Acquisition profile it is for, e.g. T1-0.36T (a file serving several, such as "
            "iqt-mc, is imported once per profile)."
        ),
    ] = None,
    factor: Annotated[
        int | None, typer.Option(help="Through-plane factor; must match the network.")
    ] = None,
    sha256: Annotated[
        str | None, typer.Option(help="Expected sha256 of WEIGHTS; refused if it differs.")
    ] = None,
    metrics: Annotated[
        Path | None, typer.Option(help="JSON file of evaluation metrics to keep with it.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Copy a weights file into the node's data folder and register it (not active yet)."""
    from dicomnode.process.registry import RegistryError, as_dict, import_model

    cfg, database = _open(config)
    try:
        with database.session() as session:
            row = import_model(
                session,
                cfg.node.data_dir,
                weights,
                card=card,
                name=name,
                version=version,
                profile=profile,
                factor=factor,
                sha256=sha256,
                metrics=metrics,
            )
            out = as_dict(row)
            has_card = row.card is not None
    except (RegistryError, OSError) as exc:
        raise fail(str(exc)) from None
    finally:
        database.dispose()
    if not has_card:
        err_console.print(
            "[yellow]warning:[/yellow] no model card was given (--card): administrators "
            "activating this version will not see how it was trained and evaluated",
            highlight=False,
        )
    if as_json:
        emit_one(out, True)
    else:
        typer.echo(
            f"imported {out['name']}@{out['version']}/k{out['factor']} (id {out['id']}) for "
            f"{out['profile']}, sha256 {out['sha256']}; activate it with: dicomnode models "
            f"activate {out['name']}@{out['version']}/k{out['factor']}"
        )


@app.command("show")
def show(
    ref: Annotated[str, typer.Argument(help="Id, NAME@VERSION or NAME@VERSION/kFACTOR.")],
    config: ConfigOption = None,
    profile: OnlyProfileOption = None,
    as_json: JsonOption = False,
) -> None:
    """Everything about a version: card, metrics, settings and activation history."""
    from dicomnode.process.registry import RegistryError, as_dict, resolve

    _, database = _open(config)
    try:
        with database.session() as session:
            details = []
            for row in resolve(session, ref, profile):
                item = as_dict(row, details=True)
                item["activations"] = [
                    {
                        "at": a.at,
                        "action": a.action,
                        "model_version_id": a.model_version_id,
                        "previous_id": a.previous_id,
                        "by": a.by,
                        "reason": a.reason,
                    }
                    for a in session.scalars(
                        select(ModelActivation)
                        .where(
                            or_(
                                ModelActivation.model_version_id == row.id,
                                ModelActivation.previous_id == row.id,
                            )
                        )
                        .order_by(ModelActivation.id)
                    )
                ]
                details.append(item)
    except RegistryError as exc:
        raise fail(str(exc)) from None
    finally:
        database.dispose()
    for item in details:
        if as_json:
            emit_one(item, True)
            continue
        card = item.pop("card")
        emit_one(item, False)
        console.rule("model card")
        console.print(card or "(no model card)", markup=False, highlight=False)


@app.command("activate")
def activate_command(
    ref: Annotated[str, typer.Argument(help="Id, NAME@VERSION (all factors) or NAME@VERSION/kK.")],
    config: ConfigOption = None,
    profile: OnlyProfileOption = None,
    by: ByOption = None,
    reason: ReasonOption = None,
    as_json: JsonOption = False,
) -> None:
    """Make a version the one new jobs of its profile and factor use (no restart needed)."""
    from dicomnode.process.registry import (
        RegistryError,
        activate,
        active_model,
        as_dict,
        label,
        resolve,
    )

    who = _by(by)
    _, database = _open(config)
    results = []
    try:
        with database.session() as session:
            before = {}
            for row in resolve(session, ref, profile):
                current = active_model(session, row.profile, row.factor)
                before[row.id] = (
                    current.id if current else None,
                    label(current) if current else None,
                )
            for row in activate(session, ref, by=who, reason=reason, profile=profile):
                previous_id, previous_label = before[row.id]
                results.append(
                    {
                        **as_dict(row),
                        "changed": previous_id != row.id,
                        "previous_id": None if previous_id == row.id else previous_id,
                        "_label": label(row),
                        "_previous": previous_label,
                    }
                )
    except RegistryError as exc:
        raise fail(str(exc)) from None
    finally:
        database.dispose()
    for item in results:
        text_label, previous = item.pop("_label"), item.pop("_previous")
        if as_json:
            emit_one(item, True)
        elif not item["changed"]:
            typer.echo(f"{text_label} is already active for {item['profile']}; nothing changed")
        else:
            replaced = f", replacing {previous}" if previous else ""
            typer.echo(
                f"{text_label} is now active for {item['profile']} k{item['factor']}{replaced}"
            )


@app.command("rollback")
def rollback_command(
    profile: Annotated[str, typer.Argument(help="Acquisition profile, e.g. T1-0.36T.")],
    config: ConfigOption = None,
    factor: Annotated[
        int | None, typer.Option(help="Only this factor (default: every factor).")
    ] = None,
    by: ByOption = None,
    reason: ReasonOption = None,
    as_json: JsonOption = False,
) -> None:
    """Return a profile to the versions active before the current ones."""
    from dicomnode.process.registry import RegistryError, active_models, as_dict, label, rollback

    who = _by(by)
    _, database = _open(config)
    try:
        with database.session() as session:
            before = active_models(session, profile)
            restored = rollback(session, profile, by=who, factor=factor, reason=reason)
            results = [
                {
                    **as_dict(row),
                    "previous_id": before[row.factor].id,
                    "_text": f"{profile} k{row.factor}: {label(row)} is active again, "
                    f"replacing {label(before[row.factor])}",
                }
                for row in restored
            ]
            untouched = (
                [] if factor is not None else sorted(set(before) - {row.factor for row in restored})
            )
    except RegistryError as exc:
        raise fail(str(exc)) from None
    finally:
        database.dispose()
    for item in results:
        text = item.pop("_text")
        if as_json:
            emit_one(item, True)
        else:
            typer.echo(text)
    for k in untouched:
        err_console.print(
            f"{profile} k{k}: nothing earlier to roll back to; unchanged", highlight=False
        )


@app.command("verify")
def verify_command(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Re-hash every registered file; exit status 1 when any is missing or altered."""
    from dicomnode.process.registry import as_dict, verify

    _, database = _open(config)
    with database.session() as session:
        rows = [
            {**as_dict(row), "ok": problem is None, "problem": problem}
            for row, problem in verify(session)
        ]
    database.dispose()
    emit(rows, as_json, "Model files", VERIFY_COLUMNS)
    bad = [r for r in rows if not r["ok"]]
    if bad:
        raise fail(
            f"{len(bad)} model file(s) failed verification; re-import them or activate another "
            "version"
        )


@app.command("remove")
def remove_command(
    ref: Annotated[str, typer.Argument(help="Id, NAME@VERSION or NAME@VERSION/kFACTOR.")],
    config: ConfigOption = None,
    profile: OnlyProfileOption = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    keep_file: Annotated[
        bool, typer.Option("--keep-file", help="Unregister but leave the file on disk.")
    ] = False,
) -> None:
    """Remove versions that are neither active nor used by an unfinished job.

    A version with history (activations, jobs) stays listed as 'removed' so the audit trail
    keeps its name and sha256; its file is deleted either way.
    """
    from dicomnode.process.registry import REMOVED, RegistryError, label, remove, resolve

    _, database = _open(config)
    try:
        if not yes:
            with database.session() as session:
                labels = [f"{label(row)} {row.profile}" for row in resolve(session, ref, profile)]
            if not typer.confirm(f"remove {', '.join(labels)}?"):
                raise typer.Exit(1)
        with database.session() as session:
            removed = [
                (f"{label(row)} for {row.profile}", row.state)
                for row in remove(session, ref, delete_file=not keep_file, profile=profile)
            ]
    except (RegistryError, OSError) as exc:
        raise fail(str(exc)) from None
    finally:
        database.dispose()
    for text, state in removed:
        kept = " (kept in the history as 'removed')" if state == REMOVED else ""
        typer.echo(f"removed {text}{kept}")
