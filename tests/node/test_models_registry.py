"""The model registry on SQLite and PostgreSQL: released weights appear by themselves, imports are
checked before anything is copied, activation and rollback keep an audit trail and walk back
through history, tampered files are caught, and nothing still in use can be removed.

Uses the real released weights (a few MB; loading them takes a fraction of a second).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import typer
from sqlalchemy import func, select
from typer.testing import CliRunner

from db.models import Job, JobState, ModelActivation, ModelState, ModelVersion, Series
from db.session import Database
from dicomnode.commands.models import app as models_app
from dicomnode.process import registry
from dicomnode.process.registry import RegistryError
from models.release import (
    FIRST_VERSION,
    MODEL_NAME,
    entry_name,
    entry_profiles,
    file_name,
    read_manifest,
    released_entries,
    save_weights,
    sha256_file,
    version_key,
    weights_dir,
)

PROFILE = "T1-0.36T"
K4 = weights_dir() / "iqt-t1-k4.safetensors"
K8 = weights_dir() / "iqt-t1-k8.safetensors"


def released_versions(directory: Path | None = None, name: str = MODEL_NAME) -> list[str]:
    """The versions of model ``name`` released in ``directory`` (default: the package), newest
    first; other models' entries (``iqt-mc``) are not ``iqt-t1``'s versions."""
    versions = {str(e["version"]) for e in released_entries(directory, name).values()}
    return sorted(versions, key=version_key, reverse=True)


def released_rows(directory: Path | None = None) -> list[tuple[str, str, str, int, str]]:
    """(name, version, profile, factor, state) of every row ``sync_released`` registers on a
    fresh installation from ``directory`` (default: the package), sorted: a file once per
    profile it serves; of each model, profile and factor the newest version active, the older
    ones retired (each replaced by the next release)."""
    served = [
        (entry_name(e), str(e["version"]), profile, int(e["factor"]))
        for e in read_manifest(directory)["models"].values()
        for profile in entry_profiles(e)
    ]
    newest: dict[tuple[str, str, int], str] = {}
    for name, version, profile, factor in served:
        known = newest.get((name, profile, factor))
        if known is None or version_key(version) > version_key(known):
            newest[(name, profile, factor)] = version
    return sorted(
        (n, v, p, k, "active" if newest[(n, p, k)] == v else "retired") for n, v, p, k in served
    )


def _package(
    folder: Path,
    versions: set[str] | None = None,
    *,
    source: Path | None = None,
    names: tuple[str, ...] | None = (MODEL_NAME,),
) -> Path:
    """A copy of the weights folder ``source`` (default: the package) holding only the files
    of models ``names`` (default ``iqt-t1``; None: every model), of ``versions`` when given:
    files, cards and manifest (added to the manifest ``folder`` may already hold)."""
    source = source or weights_dir()
    folder.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(folder)
    kept = {
        file: entry
        for file, entry in read_manifest(source)["models"].items()
        if (names is None or entry_name(entry) in names)
        and (versions is None or entry["version"] in versions)
    }
    for file in kept:
        shutil.copy(source / file, folder / file)
        card = (source / file).with_suffix(".md")
        if card.exists():
            shutil.copy(card, folder / card.name)
    manifest["models"].update(kept)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.fixture
def first_release(tmp_path: Path) -> Path:
    """The package as it was with release 0.1.0 only: what most tests here start from."""
    return _package(tmp_path / "package-0.1.0", {FIRST_VERSION})


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def plain_k4(tmp_path: Path) -> Path:
    """The released k4 file alone in a folder (no card beside it)."""
    folder = tmp_path / "download"
    folder.mkdir()
    return Path(shutil.copy(K4, folder / "candidate.safetensors"))


def _import(database: Database, data_dir: Path, weights: Path, version: str, **kw):  # type: ignore[no-untyped-def]
    kw.setdefault("profile", PROFILE)
    with database.session() as session:
        return registry.import_model(session, data_dir, weights, version=version, **kw)


def _states(database: Database) -> dict[tuple[str, int], str]:
    with database.session() as session:
        return {(r.version, r.factor): r.state for r in session.scalars(select(ModelVersion))}


def _activations(database: Database) -> list[tuple[str, int, int | None]]:
    with database.session() as session:
        return [
            (a.action, a.model_version_id, a.previous_id)
            for a in session.scalars(select(ModelActivation).order_by(ModelActivation.id))
        ]


def _flip_byte(path: Path, offset: int = -100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_sync_released_registers_both_factors_active_and_is_idempotent(
    database, data_dir, first_release
):
    manifest = read_manifest()["models"]
    with database.session() as session:
        created = registry.sync_released(session, data_dir, directory=first_release)
        assert sorted(r.factor for r in created) == [4, 8]
        active = registry.active_models(session, PROFILE)
        assert registry.profiles(session) == [PROFILE]
    assert sorted(active) == [4, 8]
    for factor, row in active.items():
        entry = manifest[f"{MODEL_NAME}-k{factor}.safetensors"]
        assert (row.name, row.version, row.source) == (MODEL_NAME, entry["version"], "released")
        path = Path(row.path)
        assert path.is_relative_to(data_dir.resolve() / registry.MODELS_SUBDIR)
        assert sha256_file(path) == row.sha256 == entry["sha256"]
        assert path.stat().st_mode & 0o777 == 0o644
        assert row.card and "Model card" in row.card and path.with_suffix(".md").is_file()
        assert row.activated_by == registry.RELEASE_BY
    assert [a[0] for a in _activations(database)] == ["release", "release"]

    before = (_states(database), _activations(database))
    with database.session() as session:
        assert registry.sync_released(session, data_dir, directory=first_release) == []
    assert (_states(database), _activations(database)) == before


def test_the_newest_release_shows_its_held_out_figures(database, data_dir, tmp_path):
    """What an administrator reads in ``models show`` of the version the node runs: how it
    scored on a head it never trained on (``python -m models.release --record-metrics``)."""
    newest = released_versions()[0]
    package = _package(tmp_path / "package", {newest})
    manifest = read_manifest(package)["models"]
    with database.session() as session:
        registry.sync_released(session, data_dir, directory=package)
        rows = session.scalars(select(ModelVersion).where(ModelVersion.version == newest)).all()
        assert sorted(r.factor for r in rows) == [4, 8]
        for row in rows:
            metrics = manifest[file_name(row.factor, newest)]["metrics"]
            assert row.metrics == metrics
            assert registry.as_dict(row, details=True)["metrics"] == metrics
            assert metrics["cases"] > 0 and "held out" in " ".join(metrics["brains"])
            assert metrics["mean_psnr_gain_db"] > 0


def test_sync_never_undoes_an_administrators_choice(database, data_dir, plain_k4, first_release):
    with database.session() as session:
        registry.sync_released(session, data_dir, directory=first_release)
    _import(database, data_dir, plain_k4, "0.2.0-test")
    with database.session() as session:
        registry.activate(session, f"{MODEL_NAME}@0.2.0-test", by="alice")
        registry.sync_released(session, data_dir, directory=first_release)
    states = _states(database)
    assert states[("0.2.0-test", 4)] == ModelState.ACTIVE
    assert states[("0.1.0", 4)] == ModelState.RETIRED  # not re-activated by the release
    assert states[("0.1.0", 8)] == ModelState.ACTIVE


def _with_new_release(package: Path, version: str) -> Path:
    """Add a (tiny, untrained) release ``version`` of both factors to a package folder."""
    import torch

    from models.aniso_unet import AnisoUNet, UNetConfig

    manifest = json.loads((package / "manifest.json").read_text())
    for k in (4, 8):
        torch.manual_seed(k)
        net = AnisoUNet(UNetConfig(factor=k, base_filters=2, residual_input=True, norm="none"))
        name = file_name(k, version)
        meta = {"name": MODEL_NAME, "version": version, "input_normalisation": "wm-peak"}
        sha = save_weights(net, package / name, meta)
        manifest["models"][name] = {
            "factor": k,
            "version": version,
            "sha256": sha,
            "profile": PROFILE,
        }
    (package / "manifest.json").write_text(json.dumps(manifest))
    return package


def test_a_new_release_replaces_a_released_version_and_rolls_back(
    database, data_dir, first_release
):
    """An upgrade brings a newer released version into use by itself, with the old one a
    rollback away; a fresh installation ends on the newest with the same history."""
    with database.session() as session:
        registry.sync_released(session, data_dir, directory=first_release)
    upgraded = _with_new_release(first_release, "9.1.0")
    with database.session() as session:
        created = registry.sync_released(session, data_dir, directory=upgraded)
        assert sorted((r.version, r.factor) for r in created) == [("9.1.0", 4), ("9.1.0", 8)]
    states = _states(database)
    assert states[("9.1.0", 4)] == states[("9.1.0", 8)] == ModelState.ACTIVE
    assert states[(FIRST_VERSION, 4)] == states[(FIRST_VERSION, 8)] == ModelState.RETIRED
    assert [a[0] for a in _activations(database)] == ["release"] * 4
    with database.session() as session:
        restored = registry.rollback(session, PROFILE, by="bob")
        assert sorted((r.version, r.factor) for r in restored) == [
            (FIRST_VERSION, 4),
            (FIRST_VERSION, 8),
        ]
    # A restart after the administrator's rollback does not bring 9.1.0 back.
    with database.session() as session:
        assert registry.sync_released(session, data_dir, directory=upgraded) == []
    assert _states(database)[(FIRST_VERSION, 4)] == ModelState.ACTIVE


def test_a_new_release_waits_where_an_administrator_chose(
    database, data_dir, plain_k4, first_release
):
    with database.session() as session:
        registry.sync_released(session, data_dir, directory=first_release)
    _import(database, data_dir, plain_k4, "0.1.5-site")
    with database.session() as session:
        registry.activate(session, f"{MODEL_NAME}@0.1.5-site", by="alice")
        registry.sync_released(
            session, data_dir, directory=_with_new_release(first_release, "9.1.0")
        )
    states = _states(database)
    assert states[("0.1.5-site", 4)] == ModelState.ACTIVE  # the administrator's choice stays
    assert states[("9.1.0", 4)] == ModelState.AVAILABLE
    assert states[("9.1.0", 8)] == ModelState.ACTIVE  # k8: the active one was a release


def check_corrupted_package_refused(
    database: Database, data_dir: Path, package: Path, altered: str
) -> None:
    """With the released file ``altered`` of ``package`` corrupted, ``sync_released`` refuses
    the package and registers nothing, not even its intact files (of any model)."""
    _flip_byte(package / altered)
    with pytest.raises(RegistryError, match=f"{altered}.*reinstall"):
        with database.session() as session:
            registry.sync_released(session, data_dir, directory=package)
    with database.session() as session:
        assert session.scalar(select(func.count()).select_from(ModelVersion)) == 0


def test_sync_refuses_a_corrupted_package(database, data_dir, tmp_path):
    package = _package(tmp_path / "package", names=None)  # every model shipped
    check_corrupted_package_refused(database, data_dir, package, file_name(8, FIRST_VERSION))


def test_import_checks_before_copying(database, data_dir, plain_k4, tmp_path):
    row = _import(database, data_dir, plain_k4, "0.2.0-test")
    assert (row.name, row.version, row.factor, row.state) == (
        MODEL_NAME,
        "0.2.0-test",
        4,
        "available",
    )
    assert row.source == "imported" and row.card is None  # no card beside it: the CLI warns
    assert row.sha256 == sha256_file(K4) == sha256_file(Path(row.path))
    assert row.settings["network"]["factor"] == 4

    # a card beside the weights is picked up; name and version come from the file's metadata
    released_copy = tmp_path / "rel"
    released_copy.mkdir()
    shutil.copy(K8, released_copy)
    shutil.copy(K8.with_suffix(".md"), released_copy)
    (tmp_path / "metrics.json").write_text(json.dumps({"psnr_db": 31.2}))
    row8 = _import(
        database,
        data_dir,
        released_copy / K8.name,
        None,
        metrics=tmp_path / "metrics.json",
    )
    assert (row8.version, row8.factor) == ("0.1.0", 8) and "Model card" in row8.card
    assert row8.metrics == {"psnr_db": 31.2}

    missing = data_dir / registry.MODELS_SUBDIR / MODEL_NAME / "0.3.0-test"
    with pytest.raises(RegistryError, match="not the expected"):
        _import(database, data_dir, plain_k4, "0.3.0-test", sha256="0" * 64)
    assert not missing.exists()
    with pytest.raises(RegistryError, match="contradicts"):
        _import(database, data_dir, plain_k4, "0.3.0-test", factor=8)
    with pytest.raises(RegistryError, match="already registered"):
        _import(database, data_dir, plain_k4, "0.2.0-test")
    with pytest.raises(RegistryError, match="--profile"):
        _import(database, data_dir, plain_k4, "0.3.0-test", profile=None)
    bogus = tmp_path / "bogus.safetensors"
    bogus.write_bytes(b"not weights at all")
    with pytest.raises(RegistryError, match="does not load"):
        _import(database, data_dir, bogus, "0.3.0-test")
    with pytest.raises(RegistryError, match="not usable"):
        _import(database, data_dir, plain_k4, "../escape")
    assert not missing.exists()
    ok = _import(database, data_dir, plain_k4, "0.3.0-test", sha256=sha256_file(K4).upper())
    assert ok.version == "0.3.0-test"


def test_activate_and_rollback_walk_back_through_history(
    database, data_dir, plain_k4, first_release
):
    with database.session() as session:
        registry.sync_released(session, data_dir, directory=first_release)
    a = registry_id(database, "0.1.0", 4)
    b = _import(database, data_dir, plain_k4, "0.2.0-test").id
    c = _import(database, data_dir, plain_k4, "0.3.0-test").id
    with database.session() as session:
        with pytest.raises(RegistryError, match="no model .*registered: iqt-t1@0.1.0"):
            registry.resolve(session, f"{MODEL_NAME}@9.9.9")
        assert [r.id for r in registry.resolve(session, f"{MODEL_NAME}@0.1.0")] == [a, a + 1]

    for ref, expected in ((str(b), b), (f"{MODEL_NAME}@0.3.0-test/k4", c)):
        with database.session() as session:
            (row,) = registry.activate(session, ref, by="alice", reason="better")
            assert row.id == expected
    with database.session() as session:
        states = {r.id: r.state for r in session.scalars(select(ModelVersion))}
        assert (states[a], states[b], states[c]) == ("retired", "retired", "active")
        assert registry.active_models(session, PROFILE)[4].activated_by == "alice"
    assert _activations(database)[-2:] == [("activate", b, a), ("activate", c, b)]

    n = len(_activations(database))
    with database.session() as session:  # activating the active version changes nothing
        assert [r.id for r in registry.activate(session, str(c), by="alice")] == [c]
    assert len(_activations(database)) == n

    with database.session() as session:
        assert [r.id for r in registry.rollback(session, PROFILE, by="bob", factor=4)] == [b]
    with database.session() as session:  # further back, not back to c
        assert [r.id for r in registry.rollback(session, PROFILE, by="bob", factor=4)] == [a]
        assert registry.active_models(session, PROFILE)[4].id == a
    with database.session() as session:
        with pytest.raises(RegistryError, match="nothing earlier to roll back to"):
            registry.rollback(session, PROFILE, by="bob", factor=4)
    assert _activations(database)[-2:] == [("rollback", b, c), ("rollback", a, b)]
    with database.session() as session:
        states = {r.id: r.state for r in session.scalars(select(ModelVersion))}
    assert (states[a], states[b], states[c]) == ("active", "retired", "retired")

    # a profile-wide rollback with nothing to return to for any factor is refused clearly
    with database.session() as session:
        with pytest.raises(RegistryError, match="k4: .* k8: "):
            registry.rollback(session, PROFILE, by="bob")


def registry_id(database: Database, version: str, factor: int) -> int:
    with database.session() as session:
        (row,) = registry.resolve(session, f"{MODEL_NAME}@{version}/k{factor}")
        return row.id


def test_verify_detects_a_tampered_file_and_activation_refuses_it(
    database, data_dir, plain_k4, first_release
):
    with database.session() as session:
        registry.sync_released(session, data_dir, directory=first_release)
    row = _import(database, data_dir, plain_k4, "0.2.0-test")
    with database.session() as session:
        assert all(problem is None for _, problem in registry.verify(session))
    _flip_byte(Path(row.path))
    with database.session() as session:
        problems = {r.id: p for r, p in registry.verify(session)}
        assert problems[row.id] and "does not match the recorded" in problems[row.id]
        assert sum(p is not None for p in problems.values()) == 1
        with pytest.raises(RegistryError, match="refusing to activate"):
            registry.activate(session, str(row.id), by="alice")
    Path(row.path).unlink()
    with database.session() as session:
        assert "file missing" in {r.id: p for r, p in registry.verify(session)}[row.id]


def test_remove_refuses_what_is_in_use_and_keeps_history(
    database, data_dir, plain_k4, first_release
):
    with database.session() as session:
        registry.sync_released(session, data_dir, directory=first_release)
    used = _import(database, data_dir, plain_k4, "0.2.0-test")
    spare = _import(database, data_dir, plain_k4, "0.3.0-test")
    with database.session() as session:
        with pytest.raises(RegistryError, match="active model"):
            registry.remove(session, f"{MODEL_NAME}@0.1.0/k4")
        series = Series(series_uid="1.2.3", study_uid="1.2")
        session.add(series)
        session.flush()
        job = Job(
            series_id=series.id,
            series_uid=series.series_uid,
            action="enhance",
            rule="lowfield-t1",
            state=JobState.QUEUED,
            model_version_id=used.id,
        )
        session.add(job)
        session.flush()
        job_id = job.id
    with database.session() as session:
        with pytest.raises(RegistryError, match=f"unfinished job\\(s\\) {job_id} \\(queued\\)"):
            registry.remove(session, str(used.id))
    assert Path(used.path).is_file()

    # never used, never activated: the row and the file go
    with database.session() as session:
        registry.remove(session, f"{MODEL_NAME}@0.3.0-test")
    with database.session() as session:
        assert session.get(ModelVersion, spare.id) is None
    assert not Path(spare.path).exists() and not Path(spare.path).parent.exists()

    # once its job is finished it can go, but stays as a tombstone the job still points at
    with database.session() as session:
        session.get(Job, job_id).state = JobState.DELIVERED
    with database.session() as session:
        (gone,) = registry.remove(session, str(used.id))
        assert gone.state == registry.REMOVED
    assert not Path(used.path).exists()
    with database.session() as session:
        assert session.get(Job, job_id).model_version_id == used.id
        assert [r.id for r, _ in registry.verify(session)] == sorted(
            r.id
            for r in session.scalars(select(ModelVersion).where(ModelVersion.source == "released"))
        )
        with pytest.raises(RegistryError, match="was removed"):
            registry.activate(session, str(used.id), by="alice")
        with pytest.raises(RegistryError, match="already removed"):
            registry.remove(session, str(used.id))
    # the same bytes can be brought back under the same version, other bytes cannot
    back = _import(database, data_dir, plain_k4, "0.2.0-test")
    assert back.id == used.id and back.state == "available" and Path(back.path).is_file()


def test_rollback_skips_removed_versions(database, data_dir, plain_k4, first_release):
    with database.session() as session:
        registry.sync_released(session, data_dir, directory=first_release)
    a = registry_id(database, "0.1.0", 4)
    b = _import(database, data_dir, plain_k4, "0.2.0-test").id
    c = _import(database, data_dir, plain_k4, "0.3.0-test").id
    with database.session() as session:
        registry.activate(session, str(b), by="alice")
    with database.session() as session:
        registry.activate(session, str(c), by="alice")
    with database.session() as session:
        registry.remove(session, str(b))
    with database.session() as session:
        assert [r.id for r in registry.rollback(session, PROFILE, by="bob")] == [a]


# --- command line -------------------------------------------------------------------------------


@pytest.fixture
def cli(database_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Run ``dicomnode models ...`` in-process against a config naming this test's database."""
    config = tmp_path / "dicomnode.toml"
    config.write_text(
        f'[node]\ndata_dir = "{tmp_path / "data"}"\ndatabase_url = "{database_url}"\n'
    )
    root = typer.Typer()
    root.add_typer(models_app, name="models")
    runner = CliRunner()

    def run(*args: str, input: str | None = None):  # type: ignore[no-untyped-def]
        return runner.invoke(root, ["models", *args, "--config", str(config)], input=input)

    return run


def _err(result) -> str:  # type: ignore[no-untyped-def]
    """stderr with rich's line wrapping undone."""
    return " ".join(result.stderr.split())


def _lines(result) -> list[dict]:  # type: ignore[no-untyped-def]
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def cli_round_trip(cli, plain_k4, directory: Path | None = None):  # type: ignore[no-untyped-def]
    """``dicomnode models`` on a fresh installation of the weights in ``directory`` (default:
    the package; the commands read the package's folder, ``models.release.weights_dir``), and
    an administrator's import, activation, rollbacks, verification and removal of T1-0.36T."""
    listed = _lines(cli("list", "--json"))
    newest, *older = released_versions(directory)
    # A fresh installation: every shipped version registered, the newest active.
    assert sorted(
        (r["name"], r["version"], r["profile"], r["factor"], r["state"]) for r in listed
    ) == released_rows(directory)
    assert {r["source"] for r in listed} == {"released"}
    assert {"id", "name", "version", "profile", "sha256", "created", "path"} <= set(listed[0])
    assert "card" not in listed[0]

    imported = cli(
        "import", str(plain_k4), "--version", "0.2.0-test", "--profile", PROFILE, "--json"
    )
    assert "no model card" in _err(imported)
    new = _lines(imported)[0]
    refused = cli(
        "import", str(plain_k4), "--version", "0.4.0", "--profile", PROFILE, "--sha256", "ab" * 32
    )
    assert refused.exit_code == 1 and "not the expected" in _err(refused)

    shown = _lines(cli("show", f"{MODEL_NAME}@{newest}/k4", "--json"))[0]
    assert "Model card" in shown["card"] and shown["activations"][0]["action"] == "release"
    text = cli("show", f"{MODEL_NAME}@{newest}/k4")
    assert text.exit_code == 0 and "Model card" in text.stdout

    activated = _lines(cli("activate", str(new["id"]), "--by", "alice", "--json"))
    assert activated[0]["state"] == "active" and activated[0]["changed"] is True
    assert activated[0]["previous_id"] == shown["id"]
    again = cli("activate", str(new["id"]), "--by", "alice")
    assert again.exit_code == 0 and "already active" in again.stdout

    rolled = _lines(cli("rollback", PROFILE, "--factor", "4", "--by", "bob", "--json"))
    assert rolled[0]["id"] == shown["id"] and rolled[0]["activated_by"] == "bob"
    for version in older:  # an upgrade's releases: each rollback walks one release back
        back = _lines(cli("rollback", PROFILE, "--factor", "4", "--json"))
        assert back[0]["version"] == version
    nothing = cli("rollback", PROFILE, "--factor", "4")
    assert nothing.exit_code == 1 and "nothing earlier" in _err(nothing)
    if older:
        cli("activate", str(shown["id"]), "--by", "bob")

    verified = _lines(cli("verify", "--json"))
    assert len(verified) == len(listed) + 1 and all(r["ok"] for r in verified)
    _flip_byte(Path(new["path"]))
    bad = cli("verify", "--json")
    assert bad.exit_code == 1 and "failed verification" in _err(bad)
    broken = [json.loads(line) for line in bad.stdout.splitlines()]
    assert [r["id"] for r in broken if not r["ok"]] == [new["id"]]

    active = cli("remove", str(shown["id"]), "--yes")
    assert active.exit_code == 1 and "active model" in _err(active)
    unknown = cli("show", "nope@1")
    assert unknown.exit_code == 1 and "registered: " in _err(unknown)
    assert f"{MODEL_NAME}@{(older or [newest])[-1]}" in _err(unknown)
    declined = cli("remove", str(new["id"]), input="n\n")
    assert declined.exit_code == 1
    removed = cli("remove", str(new["id"]), input="y\n")
    assert removed.exit_code == 0 and "kept in the history" in removed.stdout
    assert [r["state"] for r in _lines(cli("list", "--json")) if r["id"] == new["id"]] == [
        "removed"
    ]


def test_cli_round_trip(cli, plain_k4):
    cli_round_trip(cli, plain_k4)


def test_verify_accepts_a_weightless_interpolation_row_only(database):  # type: ignore[no-untyped-def]
    """``bench/bench_cluster.py`` activates classical interpolation as a registry row with no
    file; ``models verify`` must not call that a missing file, yet any other row without a
    file still is one."""
    with database.session() as session:
        for name in ("bspline", MODEL_NAME):
            session.add(
                ModelVersion(
                    name=name,
                    version="classical" if name == "bspline" else "9.9.9",
                    profile=PROFILE,
                    factor=4,
                    path="",
                    sha256="",
                    source="imported",
                    state="available",
                )
            )
    with database.session() as session:
        problems = {r.name: p for r, p in registry.verify(session)}
    assert problems["bspline"] is None
    assert problems[MODEL_NAME] and "file missing" in problems[MODEL_NAME]
