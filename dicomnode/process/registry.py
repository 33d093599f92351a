"""The model registry: which weights the node may run, which one is active, and how it got there.

Every registered version is a copy under ``data_dir/models/<name>/<version>/`` (never a path into
the installed package or an administrator's home directory), so a software upgrade or a deleted
download can never change the bytes a registered version stands for; its sha256 is recorded and
checked again on activation, by ``verify`` and by the runner when it loads the file.

One version per (profile, factor) is *active*: the job runner reads it from the database at each
job, so an activation or rollback takes effect for the next job once the caller commits, without
restarting the node. Every activation, rollback and first release is a ``ModelActivation`` row
with the version it replaced: the audit trail, and what ``rollback`` walks back.

Functions take an open ``Session`` and never commit: the caller's transaction makes a change all or
nothing. Refusals raise ``RegistryError`` with a message meant for the administrator.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import exists, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.models import Job, JobState, ModelActivation, ModelState, ModelVersion, utcnow
from dicomnode import durable
from dicomnode.process.worker import CLASSICAL_ENGINE

log = logging.getLogger("dicomnode.process.registry")

MODELS_SUBDIR = "models"

#: State of a row whose file was removed but whose history (activations, jobs that ran with it)
#: is kept: a tombstone.
REMOVED = ModelState.REMOVED

SOURCE_RELEASED = "released"
SOURCE_IMPORTED = "imported"

ACTION_RELEASE = "release"
ACTION_ACTIVATE = "activate"
ACTION_ROLLBACK = "rollback"

RELEASE_BY = "installation"

# Names and versions become directory names and appear in references (``name@version/k4``), so
# they may not contain path separators, '@' or whitespace.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
_PROFILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_REF_RE = re.compile(r"^(?P<name>[^@/\s]+)@(?P<version>[^@/\s]+)(?:/[kK]?(?P<factor>\d+))?$")


class RegistryError(Exception):
    """A registry request that cannot be honoured; the message says why and what to do."""


# --- files --------------------------------------------------------------------------------------


def models_root(data_dir: Path) -> Path:
    return Path(data_dir).resolve() / MODELS_SUBDIR


def weights_file_name(name: str, factor: int) -> str:
    """Canonical file name inside a version folder.

    Derived from (name, factor) rather than the imported file's own name, so that two factors of
    one version imported from files with the same name cannot overwrite each other.
    """
    return f"{name}-k{factor}.safetensors"


def _durable_write(target: Path, chunks: Iterable[bytes]) -> str:
    """Write ``chunks`` to ``target`` atomically and durably; returns the sha256 of the bytes.

    ``dicomnode.durable``: a temporary file in the target's folder (created with its parents if
    missing), synced, mode 0644 whatever the umask (weights are read by the node's worker
    processes, whatever user runs the CLI), renamed over the target, the folder fsynced: a
    reader sees either the old file or the complete new one, never a torn one.
    """
    digest = hashlib.sha256()
    durable.write(target, chunks, permissions=0o644, digest=digest)
    return digest.hexdigest()


def _read_chunks(path: Path) -> Iterable[bytes]:
    with open(path, "rb") as f:
        yield from iter(lambda: f.read(1 << 20), b"")


def _sha256(path: Path) -> str:
    """Same digest as ``models.release.sha256_file``, which imports torch with it: importing this
    module (and verify/activate/rollback) stays free of torch; ``models.release`` is imported only
    by ``sync_released`` and ``import_model``."""
    digest = hashlib.sha256()
    for chunk in _read_chunks(path):
        digest.update(chunk)
    return digest.hexdigest()


def _copy_checked(source: Path, target: Path, expected_sha256: str) -> None:
    """Copy ``source`` durably and make sure the bytes written are the ones that were checked
    (the source could change between hashing and copying)."""
    written = _durable_write(target, _read_chunks(source))
    if written != expected_sha256:
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
        raise RegistryError(
            f"{source} changed while it was being copied (sha256 {written}, expected "
            f"{expected_sha256}); nothing was registered, try again"
        )


def _write_card(target: Path, text: str) -> None:
    _durable_write(target, [text.encode("utf-8")])


def _file_problem(row: ModelVersion) -> str | None:
    """Why the row's file cannot be trusted, or None when it is there with the recorded hash.

    A row of classical interpolation (``bspline``, no path and no hash: what
    ``bench/bench_cluster.py`` activates to measure orchestration without compute) has no file
    to check; the worker runs it without one, so it is not a missing file either."""
    if row.name == CLASSICAL_ENGINE and not row.path and not row.sha256:
        return None
    path = Path(row.path)
    if not path.is_file():
        return f"file missing: {path}"
    try:
        actual = _sha256(path)
    except OSError as exc:
        return f"file unreadable: {path}: {exc.strerror or exc}"
    if actual != row.sha256:
        return f"sha256 {actual} does not match the recorded {row.sha256} ({path})"
    return None


# --- descriptions -------------------------------------------------------------------------------


def label(row: ModelVersion) -> str:
    """How messages name a row: ``iqt-t1@0.1.0/k4 (id 1)``."""
    return f"{row.name}@{row.version}/k{row.factor} (id {row.id})"


def as_dict(row: ModelVersion, *, details: bool = False) -> dict[str, object]:
    """The row for ``--json`` output; ``details`` adds the card text, metrics and settings
    (``show``), which would make ``list`` output unreadable."""
    out: dict[str, object] = {
        "id": row.id,
        "name": row.name,
        "version": row.version,
        "profile": row.profile,
        "factor": row.factor,
        "state": row.state,
        "sha256": row.sha256,
        "source": row.source,
        "created": row.created_at,
        "activated_at": row.activated_at,
        "activated_by": row.activated_by,
        "path": row.path,
    }
    if details:
        out["metrics"] = row.metrics
        out["settings"] = row.settings
        out["card"] = row.card
    return out


def _known(session: Session) -> str:
    rows = session.scalars(
        select(ModelVersion).order_by(ModelVersion.name, ModelVersion.version, ModelVersion.factor)
    ).all()
    if not rows:
        return "no models are registered"
    grouped: dict[str, list[ModelVersion]] = {}
    for row in rows:
        grouped.setdefault(f"{row.name}@{row.version}", []).append(row)
    parts = []
    for ref, members in grouped.items():
        several = len({m.profile for m in members}) > 1  # a contrast-agnostic version
        items = [f"k{m.factor}={m.id}" + (f" {m.profile}" if several else "") for m in members]
        parts.append(f"{ref} ({', '.join(items)})")
    return "registered: " + "; ".join(parts)


# --- queries ------------------------------------------------------------------------------------


def resolve(session: Session, ref: str, profile: str | None = None) -> list[ModelVersion]:
    """The rows a reference names: a numeric id, ``name@version`` (every factor of that version,
    and every profile a contrast-agnostic version serves) or ``name@version/k4`` (one factor);
    ``profile`` keeps the rows of that profile only (``--profile``)."""
    ref = ref.strip()
    if ref.isdigit():
        row = session.get(ModelVersion, int(ref))
        if row is None:
            raise RegistryError(f"no model with id {ref}; {_known(session)}")
        if profile is not None and row.profile != profile:
            raise RegistryError(f"{label(row)} serves {row.profile}, not {profile}")
        return [row]
    match = _REF_RE.match(ref)
    if match is None:
        raise RegistryError(
            f"{ref!r} is not a model reference: use an id, NAME@VERSION or NAME@VERSION/kFACTOR; "
            f"{_known(session)}"
        )
    query = select(ModelVersion).where(
        ModelVersion.name == match["name"], ModelVersion.version == match["version"]
    )
    if match["factor"] is not None:
        query = query.where(ModelVersion.factor == int(match["factor"]))
    if profile is not None:
        query = query.where(ModelVersion.profile == profile)
    rows = list(session.scalars(query.order_by(ModelVersion.factor, ModelVersion.profile)))
    if not rows:
        which = f" for profile {profile}" if profile is not None else ""
        raise RegistryError(f"no model {ref}{which}; {_known(session)}")
    return rows


def active_models(session: Session, profile: str) -> dict[int, ModelVersion]:
    """Factor -> the active row for ``profile`` (what new jobs of that profile run with)."""
    rows = session.scalars(
        select(ModelVersion).where(
            ModelVersion.profile == profile, ModelVersion.state == ModelState.ACTIVE
        )
    )
    return {row.factor: row for row in rows}


def active_model(session: Session, profile: str, factor: int) -> ModelVersion | None:
    """The active row for one (profile, factor), or None."""
    return _active(session, profile, factor, lock=False)


def profiles(session: Session) -> list[str]:
    """Every profile some registered (not removed) version serves."""
    return sorted(
        session.scalars(
            select(ModelVersion.profile).where(ModelVersion.state != REMOVED).distinct()
        )
    )


def history(session: Session, profile: str, factor: int) -> list[ModelActivation]:
    return list(
        session.scalars(
            select(ModelActivation)
            .where(ModelActivation.profile == profile, ModelActivation.factor == factor)
            .order_by(ModelActivation.id)
        )
    )


def _active(session: Session, profile: str, factor: int, *, lock: bool) -> ModelVersion | None:
    # FOR UPDATE on PostgreSQL serialises two administrators activating the same profile and
    # factor at once (SQLite's BEGIN IMMEDIATE already serialises every writer).
    query = select(ModelVersion).where(
        ModelVersion.profile == profile,
        ModelVersion.factor == factor,
        ModelVersion.state == ModelState.ACTIVE,
    )
    if lock:
        query = query.with_for_update()
    return session.scalars(query.order_by(ModelVersion.id)).first()


def _switch(
    session: Session,
    row: ModelVersion,
    previous: ModelVersion | None,
    *,
    action: str,
    by: str,
    reason: str | None,
) -> None:
    now = utcnow()
    if previous is not None and previous.id != row.id:
        previous.state = ModelState.RETIRED
    row.state = ModelState.ACTIVE
    row.activated_at = now
    row.activated_by = by
    session.add(
        ModelActivation(
            at=now,
            profile=row.profile,
            factor=row.factor,
            model_version_id=row.id,
            previous_id=previous.id if previous is not None else None,
            action=action,
            by=by,
            reason=reason,
        )
    )
    session.flush()


# --- released weights --------------------------------------------------------------------------


def sync_released(
    session: Session, data_dir: Path, *, directory: Path | None = None
) -> list[ModelVersion]:
    """Register the weights shipped with the software; returns the rows created (usually none).

    Called at every node start and before every ``dicomnode models`` command, so that released
    models are there with no manual step. A manifest entry serves one profile (``profile``) or,
    for a contrast-agnostic file (``iqt-mc``), several (``profiles``): each (profile, factor) is
    a row of its own, all pointing at the one copied file, so each profile is activated, rolled
    back and audited on its own. A manifest entry already registered under the same (name,
    version, profile, factor), in whatever state, even removed, is left alone: an
    administrator's activation, rollback or removal is never undone by a restart. Entries
    register oldest version first. A newly registered version is activated (action "release")
    when its profile and factor have no active version, or when the active one is an older
    version that was itself activated by a release (nobody chose it): an upgrade then brings
    the better model into use with no manual step, and ``dicomnode models rollback`` returns to
    the one before. Where an administrator activated or rolled back a version, a new release
    only becomes "available" and waits for ``dicomnode models activate``.
    """
    from models.release import entry_name, entry_profiles, read_manifest, version_key, weights_dir

    directory = directory or weights_dir()
    created: list[ModelVersion] = []
    entries = sorted(
        read_manifest(directory)["models"].items(),
        key=lambda item: (version_key(str(item[1]["version"])), item[0]),
    )
    for file_name, entry in entries:
        name = entry_name(entry)
        version = str(entry["version"])
        factor = int(entry["factor"])
        served = entry_profiles(entry)
        if not served:
            raise RegistryError(
                f"released {file_name} has no 'profile' in {directory / 'manifest.json'}; "
                "the installed package is incomplete"
            )
        copied = False
        for profile in served:
            existing = _find(session, name, version, factor, profile)
            if existing is not None:
                if existing.sha256 != entry["sha256"]:
                    log.warning(
                        "released %s version %s k%d differs from the registered copy; keeping "
                        "the registered one (a version stands for fixed bytes)",
                        name,
                        version,
                        factor,
                    )
                continue
            row = _register_released(
                session, data_dir, directory / file_name, entry, profile, copy=not copied
            )
            copied = True
            if row is None:
                continue
            created.append(row)
            log.info(
                "registered released model",
                extra={"model": label(row), "profile": row.profile, "sha256": row.sha256},
            )
            current = _active(session, row.profile, factor, lock=True)
            if current is None or _superseded_by_release(session, current, row):
                _switch(
                    session,
                    row,
                    current,
                    action=ACTION_RELEASE,
                    by=RELEASE_BY,
                    reason=f"released with the software ({name} {version})",
                )
    return created


def _register_released(
    session: Session, data_dir: Path, source: Path, entry: dict, profile: str, *, copy: bool
) -> ModelVersion | None:
    """One (profile, factor) row of a released file, the file copied into ``data_dir`` first
    (once per file: ``copy``); None when another process registered it at the same moment."""
    from models.release import entry_name

    name, version, factor = entry_name(entry), str(entry["version"]), int(entry["factor"])
    manifest = source.parent / "manifest.json"
    if not source.is_file():
        raise RegistryError(
            f"released {source.name} is listed in {manifest} but missing; reinstall the package"
        )
    actual = _sha256(source)
    if actual != entry["sha256"]:
        raise RegistryError(
            f"released {source} has sha256 {actual}, the manifest says {entry['sha256']}: "
            "the installed file is corrupted or was replaced; reinstall the package"
        )
    card_source = source.with_suffix(".md")
    card = card_source.read_text(encoding="utf-8") if card_source.is_file() else None
    target = models_root(data_dir) / name / version / weights_file_name(name, factor)
    if copy:
        _copy_checked(source, target, actual)
        if card is not None:
            _write_card(target.with_suffix(".md"), card)
    settings = {key: entry[key] for key in ("tile", "consistency_correction") if key in entry}
    network = (entry.get("config") or {}).get("model")
    if network is not None:
        settings["network"] = network
    row = ModelVersion(
        name=name,
        version=version,
        profile=profile,
        factor=factor,
        path=str(target),
        sha256=actual,
        card=card,
        metrics=entry.get("metrics"),
        settings=settings or None,
        source=SOURCE_RELEASED,
        state=ModelState.AVAILABLE,
    )
    # A savepoint, so that a node and a CLI syncing at the same moment on PostgreSQL do not
    # fail: the second insert hits the unique index and simply finds the row registered.
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:
        log.info("released %s@%s k%d registered concurrently", name, version, factor)
        return None
    return row


def _superseded_by_release(session: Session, current: ModelVersion, new: ModelVersion) -> bool:
    """Whether a newly released ``new`` should replace the active ``current``: same name, an
    older version, and the last activation of that profile and factor was a release."""
    from models.release import version_key

    if current.name != new.name or version_key(current.version) >= version_key(new.version):
        return False
    entries = history(session, current.profile, current.factor)
    return bool(entries) and entries[-1].action == ACTION_RELEASE


def _find(
    session: Session, name: str, version: str, factor: int, profile: str
) -> ModelVersion | None:
    return session.scalars(
        select(ModelVersion).where(
            ModelVersion.name == name,
            ModelVersion.version == version,
            ModelVersion.factor == factor,
            ModelVersion.profile == profile,
        )
    ).first()


def _other_bytes(
    session: Session, name: str, version: str, factor: int, sha256: str
) -> ModelVersion | None:
    """A row of (name, version, factor), for any profile, whose file has other bytes: one
    version and factor stands for one file, however many profiles it serves."""
    return session.scalars(
        select(ModelVersion).where(
            ModelVersion.name == name,
            ModelVersion.version == version,
            ModelVersion.factor == factor,
            ModelVersion.sha256 != sha256,
        )
    ).first()


# --- import -------------------------------------------------------------------------------------


def _weights_metadata(path: Path) -> dict:
    """The 'iqt' metadata JSON written by ``models.release.save_weights`` ({} when unreadable:
    ``load_weights`` reports the real problem)."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        value = json.loads(meta.get("iqt", "{}"))
    except Exception:  # noqa: BLE001 - any unreadable file is refused by load_weights next
        return {}
    return value if isinstance(value, dict) else {}


def _check_identifier(kind: str, value: str, pattern: re.Pattern[str]) -> str:
    value = value.strip()
    if not pattern.match(value):
        raise RegistryError(
            f"{kind} {value!r} is not usable: up to 64 letters, digits, '.', '_', '+' or '-', "
            "starting with a letter or digit"
        )
    return value


def import_model(
    session: Session,
    data_dir: Path,
    weights: Path,
    *,
    card: Path | None = None,
    name: str | None = None,
    version: str | None = None,
    profile: str | None = None,
    factor: int | None = None,
    sha256: str | None = None,
    metrics: Path | None = None,
) -> ModelVersion:
    """Copy a weights file (and its model card) into ``data_dir`` and register it "available".

    Everything is checked before a byte is copied, so a refusal leaves nothing behind: the hash
    (against ``sha256`` when given, e.g. from the release notes), that the file really loads as
    the network, that ``factor`` agrees with the network's own configuration, and that (name,
    version, profile, factor) is new. ``name``, ``version`` and ``profile`` default to the
    file's 'iqt' metadata; a contrast-agnostic file lists several ``profiles`` and is imported
    once per profile (``--profile``), each import a row of its own sharing the one file. The
    card defaults to ``<weights stem>.md`` beside the file; without one the row has no card
    (the CLI warns: administrators should know what they activate).

    Importing a version that was removed brings it back, but only with the very same bytes: a
    (name, version, factor) stands for one sha256 forever, whatever profile it serves.
    """
    from models.release import MODEL_NAME, load_weights

    weights = Path(weights)
    if not weights.is_file():
        raise RegistryError(f"no weights file {weights}")
    actual = _sha256(weights)
    if sha256 is not None:
        expected = sha256.strip().lower()
        if not _SHA256_RE.match(expected):
            raise RegistryError(f"--sha256 {sha256!r} is not a sha256 (64 hexadecimal digits)")
        if actual != expected:
            raise RegistryError(
                f"{weights} has sha256 {actual}, not the expected {expected}: the file is "
                "corrupted or not the one released; nothing was imported"
            )
    try:
        network = load_weights(weights, None)
    except Exception as exc:  # noqa: BLE001 - any failure means the node could not run it
        raise RegistryError(f"{weights} does not load as an {MODEL_NAME} network: {exc}") from None
    network_factor = int(network.config.factor)
    if factor is not None and factor != network_factor:
        raise RegistryError(
            f"--factor {factor} contradicts the network in {weights.name}, which was built for "
            f"factor {network_factor}"
        )
    meta = _weights_metadata(weights)
    name = name or meta.get("name")
    version = version or meta.get("version")
    listed = meta.get("profiles") or []
    if not profile and len(listed) > 1:
        raise RegistryError(
            f"{weights.name} serves the profiles {', '.join(map(str, listed))}: give --profile, "
            "and import it once for each profile it should serve"
        )
    profile = profile or meta.get("profile") or (listed[0] if listed else None)
    if not name:
        raise RegistryError(f"{weights.name} does not say its model name: give --name")
    if not version:
        raise RegistryError(f"{weights.name} does not say its version: give --version")
    if not profile:
        raise RegistryError(
            f"{weights.name} does not say which acquisition profile it is for: give --profile "
            f"(e.g. T1-0.36T; known: {', '.join(profiles(session)) or 'none'})"
        )
    name = _check_identifier("name", str(name), _NAME_RE)
    version = _check_identifier("version", str(version), _NAME_RE)
    profile = _check_identifier("profile", str(profile), _PROFILE_RE)

    if card is None and weights.with_suffix(".md").is_file():
        card = weights.with_suffix(".md")
    card_text = None
    if card is not None:
        try:
            card_text = Path(card).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise RegistryError(f"cannot read the model card {card}: {exc}") from None
    metrics_value = None
    if metrics is not None:
        try:
            metrics_value = json.loads(Path(metrics).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RegistryError(f"cannot read metrics from {metrics}: {exc}") from None
        if not isinstance(metrics_value, dict):
            raise RegistryError(f"{metrics} must hold a JSON object (metric name -> value)")

    existing = _find(session, name, version, network_factor, profile)
    if existing is not None and not (existing.state == REMOVED and existing.sha256 == actual):
        if existing.state == REMOVED:
            raise RegistryError(
                f"{name}@{version}/k{network_factor} was registered with sha256 "
                f"{existing.sha256} and removed; a version stands for fixed bytes, so import "
                "this file under a new --version"
            )
        raise RegistryError(
            f"{label(existing)} is already registered ({existing.state}); import this file "
            "under a new --version"
        )
    other = _other_bytes(session, name, version, network_factor, actual)
    if other is not None:
        raise RegistryError(
            f"{label(other)} ({other.profile}) was registered with sha256 {other.sha256}; a "
            "version stands for fixed bytes, so import this file under a new --version"
        )

    target = models_root(data_dir) / name / version / weights_file_name(name, network_factor)
    _copy_checked(weights, target, actual)
    if card_text is not None:
        _write_card(target.with_suffix(".md"), card_text)
    settings = {"network": network.config.to_dict()}

    if existing is not None:  # a removed version brought back with its own bytes
        existing.state = ModelState.AVAILABLE
        existing.path = str(target)
        existing.profile = profile
        if card_text is not None:
            existing.card = card_text
        if metrics_value is not None:
            existing.metrics = metrics_value
        session.flush()
        return existing
    row = ModelVersion(
        name=name,
        version=version,
        profile=profile,
        factor=network_factor,
        path=str(target),
        sha256=actual,
        card=card_text,
        metrics=metrics_value,
        settings=settings,
        source=SOURCE_IMPORTED,
        state=ModelState.AVAILABLE,
    )
    session.add(row)
    session.flush()
    log.info("imported model", extra={"model": label(row), "sha256": actual})
    return row


# --- activation and rollback --------------------------------------------------------------------


def activate(
    session: Session,
    ref: str,
    *,
    by: str,
    reason: str | None = None,
    profile: str | None = None,
) -> list[ModelVersion]:
    """Make every row of ``ref`` (of ``profile`` only, when given) the active version of its
    (profile, factor).

    The version it replaces becomes "retired" (``rollback`` can return to it). Each file is
    re-hashed first: a missing or altered file is refused before anything changes, since the
    runner would otherwise fail every job of that profile. A row that is already active is left
    as it is (no activation row is written).
    """
    rows = resolve(session, ref, profile)
    for row in rows:
        if row.state == REMOVED:
            raise RegistryError(f"{label(row)} was removed; import it again before activating it")
        problem = _file_problem(row)
        if problem is not None:
            raise RegistryError(f"refusing to activate {label(row)}: {problem}")
    for row in rows:
        current = _active(session, row.profile, row.factor, lock=True)
        if current is not None and current.id == row.id:
            continue
        _switch(session, row, current, action=ACTION_ACTIVATE, by=by, reason=reason)
        log.info(
            "model activated",
            extra={
                "model": label(row),
                "profile": row.profile,
                "previous": label(current) if current else None,
                "by": by,
            },
        )
    return rows


def _stack(entries: list[ModelActivation]) -> list[int]:
    """Replay the activation history of one (profile, factor) into a stack of version ids.

    An activation or release pushes; a rollback pops back to the version it restored. The top is
    the active version and the entry below it is what a rollback returns to, so two rollbacks in
    a row walk further back (A, B, C: C -> B -> A) instead of swapping the last two.
    """
    stack: list[int] = []
    for entry in entries:
        if entry.action == ACTION_ROLLBACK:
            if entry.model_version_id in stack:
                while stack and stack[-1] != entry.model_version_id:
                    stack.pop()
            else:  # history edited by hand: start again from what it says is active
                stack = [entry.model_version_id]
        elif not stack or stack[-1] != entry.model_version_id:
            stack.append(entry.model_version_id)
    return stack


def rollback(
    session: Session,
    profile: str,
    *,
    by: str,
    factor: int | None = None,
    reason: str | None = None,
) -> list[ModelVersion]:
    """Return ``profile`` (one factor, or each of its factors) to the version active before.

    Returns the rows made active. With ``factor`` None, factors that have nothing to roll back to
    are left as they are (an administrator who activated a new k4 only, then rolls the profile
    back, expects k4 restored and k8 untouched); it is refused only when no factor can roll back.
    Versions removed since are skipped; a target whose file is missing or altered is refused.
    """
    current_rows = active_models(session, profile)
    if factor is not None:
        if factor not in current_rows:
            raise RegistryError(
                f"no active model for profile {profile} and factor k{factor}; "
                f"active factors: {', '.join(f'k{f}' for f in sorted(current_rows)) or 'none'}"
            )
        current_rows = {factor: current_rows[factor]}
    elif not current_rows:
        known = ", ".join(profiles(session)) or "none"
        raise RegistryError(f"no active model for profile {profile} (profiles: {known})")

    plan: list[tuple[ModelVersion, ModelVersion]] = []
    reasons: list[str] = []
    for k, current in sorted(current_rows.items()):
        stack = _stack(history(session, profile, k))
        while stack and stack[-1] == current.id:
            stack.pop()
        target = None
        while stack:
            candidate = session.get(ModelVersion, stack.pop())
            if candidate is not None and candidate.state != REMOVED:
                target = candidate
                break
        if target is None:
            reasons.append(
                f"k{k}: {label(current)} is the first version activated for {profile}; "
                "there is nothing earlier to roll back to"
            )
            continue
        problem = _file_problem(target)
        if problem is not None:
            raise RegistryError(
                f"cannot roll {profile} k{k} back to {label(target)}: {problem}; "
                "activate another version instead"
            )
        plan.append((current, target))
    if not plan:
        raise RegistryError("nothing to roll back: " + "; ".join(reasons))
    restored = []
    for current, target in plan:
        locked = _active(session, current.profile, current.factor, lock=True)
        _switch(
            session,
            target,
            locked or current,
            action=ACTION_ROLLBACK,
            by=by,
            reason=reason,
        )
        log.info(
            "model rolled back",
            extra={"model": label(target), "from": label(current), "profile": profile, "by": by},
        )
        restored.append(target)
    return restored


# --- integrity and removal ----------------------------------------------------------------------


def verify(session: Session) -> list[tuple[ModelVersion, str | None]]:
    """Re-hash every registered file: (row, problem or None), removed rows excepted."""
    rows = session.scalars(
        select(ModelVersion)
        .where(ModelVersion.state != REMOVED)
        .order_by(ModelVersion.profile, ModelVersion.factor, ModelVersion.id)
    )
    return [(row, _file_problem(row)) for row in rows]


def remove(
    session: Session, ref: str, *, delete_file: bool = True, profile: str | None = None
) -> list[ModelVersion]:
    """Remove the versions ``ref`` names (of ``profile`` only, when given); returns them.

    Refused while a version is active (activate or roll back to another first) or while an
    unfinished job (queued, processing, failed and retryable, ...) refers to it.

    Otherwise the file and card are deleted (unless ``delete_file`` is False) and the row:

    - is deleted outright when nothing refers to it: an imported version that was never
      activated and never used by a job;
    - else stays as a tombstone in state "removed": ``model_activations`` and
      ``jobs.model_version_id`` are foreign keys to it (enforced by PostgreSQL, and by SQLite
      with ``PRAGMA foreign_keys=ON``), and the history they record - who activated what, which
      bytes (sha256) a delivered series was computed with - is kept rather than rewritten.
      Released versions always stay as tombstones, so that the next ``sync_released`` does not
      register them again.

    A tombstone cannot be activated or rolled back to and is skipped by ``verify``; importing the
    same bytes under the same name and version brings it back. The file of a contrast-agnostic
    version is deleted with the last of its profiles' rows: the others still run it.
    """
    rows = resolve(session, ref, profile)
    for row in rows:
        if row.state == REMOVED:
            raise RegistryError(f"{label(row)} is already removed")
        if row.state == ModelState.ACTIVE:
            raise RegistryError(
                f"{label(row)} is the active model for {row.profile} k{row.factor}; activate "
                "another version or roll back first"
            )
        jobs = session.execute(
            select(Job.id, Job.state)
            .where(Job.model_version_id == row.id, Job.state.in_(JobState.UNFINISHED))
            .order_by(Job.id)
        ).all()
        if jobs:
            listed = ", ".join(f"{job_id} ({state})" for job_id, state in jobs[:10])
            more = f" and {len(jobs) - 10} more" if len(jobs) > 10 else ""
            raise RegistryError(
                f"{label(row)} is used by unfinished job(s) {listed}{more}; let them finish or "
                "cancel them (dicomnode jobs cancel ID) first"
            )
    for row in rows:
        referenced = session.scalar(
            select(
                exists().where(
                    or_(
                        ModelActivation.model_version_id == row.id,
                        ModelActivation.previous_id == row.id,
                    )
                )
            )
        ) or session.scalar(select(exists().where(Job.model_version_id == row.id)))
        if referenced or row.source == SOURCE_RELEASED:
            row.state = REMOVED
        else:
            session.delete(row)
        session.flush()
        if delete_file and not _still_used(session, row.path):
            _delete_files(Path(row.path))
        log.info("model removed", extra={"model": label(row), "tombstone": row.state == REMOVED})
    return rows


def _still_used(session: Session, path: str) -> bool:
    """Whether a registered (not removed) row still runs the file at ``path``: another profile
    of a contrast-agnostic version."""
    return bool(
        session.scalar(
            select(exists().where(ModelVersion.path == path, ModelVersion.state != REMOVED))
        )
    )


def _delete_files(path: Path) -> None:
    """Delete the weights and card, then the version and name folders if that left them empty."""
    for item in (path, path.with_suffix(".md")):
        with contextlib.suppress(FileNotFoundError):
            item.unlink()
    folder = path.parent
    for _ in range(2):
        try:
            folder.rmdir()
        except OSError:
            break
        folder = folder.parent
    with contextlib.suppress(OSError):
        durable.fsync_dir(folder)
