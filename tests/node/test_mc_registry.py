"""One contrast-agnostic file for several profiles (``iqt-mc``, issue 16) in the model registry,
on SQLite and PostgreSQL: a row per (profile, factor) sharing one file, each profile activated
and rolled back on its own, the file kept while any profile still runs it, and a T2 job of the
node run by ``iqt-mc`` through the runner, the worker's engine cache and the pipeline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from db.migrate import alembic_config
from db.models import Job, JobState, ModelVersion
from db.session import Database
from dicomnode.config import parse_config
from dicomnode.process import registry
from dicomnode.process.registry import RegistryError
from dicomnode.process.runner import JobRunner, WorkerSlot, spec_of
from dicomnode.process.worker import EngineCache, process
from models.release import (
    MC_MODEL_NAME,
    MODEL_NAME,
    read_manifest,
    released_entries,
    sha256_file,
    weights_dir,
)
from tests.models.mc_release import PROFILES, tiny_mc_release
from tests.node.test_models_registry import _err, _lines
from tests.node.test_models_registry import cli as cli  # the fixture, for getfixturevalue

T2, T2_64, FLAIR_64 = PROFILES


@pytest.fixture(scope="module")
def releases(tmp_path_factory) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    """Tiny ``iqt-mc`` releases, trained once for the module: 0.1.0, and 0.1.0 + 0.2.0."""
    root = tmp_path_factory.mktemp("mc-releases")
    first = tiny_mc_release(root / "first")
    both = root / "both"
    shutil.copytree(first, both)
    tiny_mc_release(both, version="0.2.0")
    return {"0.1.0": first, "0.2.0": both}


def _package(folder: Path, mc: Path) -> Path:
    """The shipped iqt-t1 0.1.0 beside an iqt-mc release, as one weights folder."""
    folder.mkdir(parents=True)
    manifest = read_manifest(mc)
    for name in manifest["models"]:
        shutil.copy(mc / name, folder / name)
        shutil.copy((mc / name).with_suffix(".md"), folder)
    t1 = {n: e for n, e in released_entries().items() if e["version"] == "0.1.0"}
    for name in t1:
        shutil.copy(weights_dir() / name, folder / name)
    manifest["models"].update(t1)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def _sync(database: Database, data_dir: Path, package: Path) -> list[tuple[str, str, int]]:
    with database.session() as session:
        created = registry.sync_released(session, data_dir, directory=package)
        return [(r.version, r.profile, r.factor) for r in created]


def _active(database: Database, profile: str) -> dict[int, tuple[str, str]]:
    with database.session() as session:
        return {
            k: (row.name, row.version)
            for k, row in registry.active_models(session, profile).items()
        }


def _rows(database: Database, name: str = MC_MODEL_NAME) -> list[ModelVersion]:
    with database.session() as session:
        rows = session.scalars(
            select(ModelVersion)
            .where(ModelVersion.name == name)
            .order_by(ModelVersion.version, ModelVersion.profile, ModelVersion.factor)
        ).all()
        session.expunge_all()
        return list(rows)


def test_released_file_is_a_row_per_profile_and_factor_sharing_one_file(
    database, tmp_path, releases
):
    package = _package(tmp_path / "package", releases["0.1.0"])
    data_dir = tmp_path / "data"
    created = _sync(database, data_dir, package)
    assert sorted(c for c in created if c[1] in PROFILES) == sorted(
        ("0.1.0", p, k) for p in PROFILES for k in (4, 8)
    )
    for profile in PROFILES:  # every profile it serves: active with no manual step
        assert _active(database, profile) == {4: ("iqt-mc", "0.1.0"), 8: ("iqt-mc", "0.1.0")}
    assert _active(database, "T1-0.36T") == {4: (MODEL_NAME, "0.1.0"), 8: (MODEL_NAME, "0.1.0")}
    rows = _rows(database)
    assert len(rows) == 6 and {r.path for r in rows} == {
        str(data_dir.resolve() / "models" / "iqt-mc" / "0.1.0" / f"iqt-mc-k{k}.safetensors")
        for k in (4, 8)
    }
    for row in rows:
        assert sha256_file(Path(row.path)) == row.sha256 and "Model card: iqt-mc" in row.card
    assert _sync(database, data_dir, package) == []  # idempotent
    with database.session() as session:
        assert all(problem is None for _, problem in registry.verify(session))
        # a reference names every profile's rows, --profile one profile's
        assert len(registry.resolve(session, "iqt-mc@0.1.0/k4")) == 3
        (only,) = registry.resolve(session, "iqt-mc@0.1.0/k4", profile=T2_64)
        assert only.profile == T2_64
        with pytest.raises(RegistryError, match="for profile T1-0.36T"):
            registry.resolve(session, "iqt-mc@0.1.0", profile="T1-0.36T")
        with pytest.raises(RegistryError, match=r"k4=\d+ T2-0.36T"):
            registry.resolve(session, "iqt-mc@9")


def test_each_profile_is_activated_and_rolled_back_on_its_own(database, tmp_path, releases):
    data_dir = tmp_path / "data"
    _sync(database, data_dir, _package(tmp_path / "p1", releases["0.1.0"]))
    _sync(database, data_dir, _package(tmp_path / "p2", releases["0.2.0"]))
    for profile in PROFILES:  # an upgrade replaces what a release had activated
        assert _active(database, profile) == {4: ("iqt-mc", "0.2.0"), 8: ("iqt-mc", "0.2.0")}
    with database.session() as session:
        restored = registry.rollback(session, T2_64, by="bob")
        assert {(r.version, r.profile) for r in restored} == {("0.1.0", T2_64)}
    assert _active(database, T2_64) == {4: ("iqt-mc", "0.1.0"), 8: ("iqt-mc", "0.1.0")}
    assert _active(database, T2)[4] == _active(database, FLAIR_64)[4] == ("iqt-mc", "0.2.0")
    with database.session() as session:
        rows = registry.activate(session, "iqt-mc@0.2.0/k8", by="alice", profile=T2_64)
        assert [(r.profile, r.factor) for r in rows] == [(T2_64, 8)]
    assert _active(database, T2_64) == {4: ("iqt-mc", "0.1.0"), 8: ("iqt-mc", "0.2.0")}
    with database.session() as session:
        history = registry.history(session, T2_64, 8)
        assert [h.action for h in history] == ["release", "release", "rollback", "activate"]
        assert {h.profile for h in history} == {T2_64}


def test_the_shared_file_stays_while_a_profile_still_runs_it(database, tmp_path, releases):
    data_dir = tmp_path / "data"
    _sync(database, data_dir, _package(tmp_path / "p1", releases["0.1.0"]))
    _sync(database, data_dir, _package(tmp_path / "p2", releases["0.2.0"]))
    old = {r.factor: Path(r.path) for r in _rows(database) if r.version == "0.1.0"}
    for profile in (T2, T2_64):
        with database.session() as session:
            removed = registry.remove(session, "iqt-mc@0.1.0", profile=profile)
            assert {(r.profile, r.state) for r in removed} == {(profile, "removed")}
        assert all(path.is_file() for path in old.values())  # FLAIR-64mT still has 0.1.0
    with database.session() as session:
        registry.remove(session, "iqt-mc@0.1.0", profile=FLAIR_64)
    assert not any(path.exists() for path in old.values())
    with database.session() as session:  # the 0.2.0 file of every profile is untouched
        assert all(problem is None for _, problem in registry.verify(session))


def test_import_is_once_per_profile_and_one_version_is_one_file(database, tmp_path, releases):
    data_dir = tmp_path / "data"
    k4 = releases["0.1.0"] / "iqt-mc-0.1.0-k4.safetensors"
    with database.session() as session, pytest.raises(RegistryError, match="give --profile"):
        registry.import_model(session, data_dir, k4, version="7.0")
    with database.session() as session:
        first = registry.import_model(session, data_dir, k4, version="7.0", profile=T2)
        second = registry.import_model(session, data_dir, k4, version="7.0", profile=T2_64)
        assert (first.name, first.profile, second.profile) == (MC_MODEL_NAME, T2, T2_64)
        assert first.path == second.path and first.id != second.id
        with pytest.raises(RegistryError, match="already registered"):
            registry.import_model(session, data_dir, k4, version="7.0", profile=T2)
    other = releases["0.2.0"] / "iqt-mc-0.2.0-k4.safetensors"
    with database.session() as session, pytest.raises(RegistryError, match="fixed bytes"):
        registry.import_model(session, data_dir, other, version="7.0", profile=FLAIR_64)


def test_the_schema_holds_a_row_per_profile_and_refuses_duplicates(database):
    def row(profile: str) -> ModelVersion:
        return ModelVersion(
            name="iqt-mc",
            version="1.0",
            profile=profile,
            factor=4,
            path="/x",
            sha256="0" * 64,
            source="imported",
            state="available",
        )

    with database.session() as session:
        session.add_all([row(T2), row(T2_64)])
    with pytest.raises(IntegrityError):
        with database.session() as session:
            session.add(row(T2))
    config = alembic_config(database)
    with database.engine.connect() as connection:
        config.attributes["connection"] = connection
        with pytest.raises(RuntimeError, match="several profiles"):
            command.downgrade(config, "0006")
        connection.rollback()


def test_worker_runs_iqt_mc_rows_as_one_network(database, tmp_path, releases, monkeypatch):
    import pipeline.engines

    _sync(database, tmp_path / "data", _package(tmp_path / "package", releases["0.1.0"]))
    asked: list[str] = []
    load_engine = pipeline.engines.load_engine

    def recording(engine, weights, /, **options):  # type: ignore[no-untyped-def]
        asked.append(engine)
        return load_engine(engine, weights, **options)

    monkeypatch.setattr(pipeline.engines, "load_engine", recording)
    with database.session() as session:
        specs = [spec_of(registry.active_models(session, p)[4]) for p in PROFILES]
        t1 = spec_of(registry.active_models(session, "T1-0.36T")[4])
    cache = EngineCache("cpu", 1)
    engines = {id(cache.get(spec)) for spec in specs}
    assert len(engines) == 1 and asked == ["iqt-mc"]  # three rows, one file, one network
    engine = cache.get(specs[0])
    assert (engine.info.name, engine.info.version) == ("iqt-mc", "0.1.0")
    assert engine.info.weights_sha256 == specs[0].sha256
    assert cache.get(t1).info.name == MODEL_NAME and asked == ["iqt-mc", "iqt-t1"]


def test_a_t2_job_runs_the_profiles_iqt_mc(database, tmp_path, releases):
    """A simulated 0.36 T T2 series (``dicomnode simulate``'s path), routed to T2-0.36T, runs
    the active iqt-mc version; the job and the derived series name it and its file."""
    import pydicom

    from models.profile import load_profile
    from pipeline.lowfield import simulate_series, source_from_brain
    from pipeline.sample import write_series
    from tests.models.conftest import ventricle_phantom
    from tests.node.test_profile_engines import _config, _queued_job

    data_dir = tmp_path / "data"
    _sync(database, data_dir, _package(tmp_path / "package", releases["0.1.0"]))
    head = ventricle_phantom((48, 56, 56), voxel_mm=2.0)  # 96 x 112 x 112 mm
    datasets, _, _ = simulate_series(source_from_brain(head), load_profile(T2), seed=2)
    files = write_series(datasets, tmp_path / "series")
    config = parse_config(_config(tmp_path, {}))
    runner, slot = JobRunner(database, config), WorkerSlot("cpu-0", "cpu", 1, config)
    job_id = _queued_job(database, files)
    request = runner.claim(slot)
    assert request is not None and request.job_id == job_id
    assert {s.name for s in request.models.values()} == {"iqt-mc"}
    outcome = process(request, EngineCache("cpu", 1))
    assert outcome.ok, outcome.message
    assert outcome.metadata["engine"] == "iqt-mc" and outcome.factor == 8
    row_file = request.models[8]
    assert outcome.metadata["weights_sha256"] == row_file.sha256
    derived = pydicom.dcmread(outcome.outputs[0].path)
    assert "iqt-mc 0.1.0" in derived.DerivationDescription
    assert row_file.sha256 in derived.DerivationDescription
    runner.finish(slot, request, outcome)
    with database.session() as session:
        job = session.get(Job, job_id)
        assert job.state == JobState.STORED and job.model_name == "iqt-mc"
        assert session.get(ModelVersion, job.model_version_id).profile == T2


def test_cli_imports_activates_and_removes_one_profile_at_a_time(  # type: ignore[no-untyped-def]
    request, database_url, releases
):
    # test_models_registry's ``dicomnode models ...`` on this test's database (each kind)
    cli = request.getfixturevalue("cli")
    k4 = str(releases["0.1.0"] / "iqt-mc-0.1.0-k4.safetensors")
    refused = cli("import", k4, "--version", "7.0")
    assert refused.exit_code == 1 and "give --profile" in _err(refused)
    for profile in (T2, T2_64):
        row = _lines(cli("import", k4, "--version", "7.0", "--profile", profile, "--json"))[0]
        assert (row["name"], row["profile"]) == ("iqt-mc", profile)
    activated = _lines(cli("activate", "iqt-mc@7.0", "--profile", T2_64, "--json"))
    assert [(r["profile"], r["state"]) for r in activated] == [(T2_64, "active")]
    listed = {
        r["profile"]: r["state"] for r in _lines(cli("list", "--json")) if r["version"] == "7.0"
    }
    assert listed == {T2: "available", T2_64: "active"}
    removed = cli("remove", "iqt-mc@7.0", "--profile", T2, "--yes")
    assert removed.exit_code == 0 and f"for {T2}" in removed.stdout
    still = [r for r in _lines(cli("list", "--json")) if r["version"] == "7.0"]
    assert [r["profile"] for r in still] == [T2_64] and Path(still[0]["path"]).is_file()
    shown = _lines(cli("show", "iqt-mc@7.0", "--profile", T2_64, "--json"))
    assert len(shown) == 1 and shown[0]["activations"][0]["action"] == "activate"
