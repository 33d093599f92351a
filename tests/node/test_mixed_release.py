"""The package once ``iqt-mc`` weights ship beside ``iqt-t1``'s.

A weights folder holding the real shipped ``iqt-t1`` files plus a tiny ``iqt-mc`` release whose
version is newer than every ``iqt-t1`` one (so that anything taking every manifest entry for
``iqt-t1`` would pick it) stands in for that package. The helpers the other tests read the real
package with (``test_demo.released_k4``, ``test_models_registry``'s versions, rows and package
copies, ``test_engines.check_releases_run_by_name``) and the code under them (engines by name,
``sync_released``, ``dicomnode models``) must still pick ``iqt-t1`` for T1-0.36T and treat the
``iqt-mc`` entries as a model of their own.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import models.release
import pipeline.engines
from models.release import (
    FIRST_VERSION,
    MC_MODEL_NAME,
    MODEL_NAME,
    entry_name,
    file_name,
    read_manifest,
    released_entries,
    released_entry,
    version_key,
)
from pipeline.engines import available_engines, choose_engine
from tests.models.mc_release import PROFILES, tiny_mc_release
from tests.node.test_demo import released_k4
from tests.node.test_models_registry import (
    PROFILE,
    _lines,
    _package,
    check_corrupted_package_refused,
    cli_round_trip,
    released_rows,
    released_versions,
)
from tests.node.test_models_registry import cli as cli  # fixtures
from tests.node.test_models_registry import plain_k4 as plain_k4
from tests.pipeline.test_engines import check_releases_run_by_name

MC_VERSION = "9.0.0"
T1_SERIES = {
    "Modality": "MR",
    "SeriesDescription": "T1 SE AX",
    "MagneticFieldStrength": 0.36,
    "profile": PROFILE,
}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    """Every shipped ``iqt-t1`` release (files, cards, manifest) plus ``iqt-mc``
    ``MC_VERSION``, k4 and k8, serving ``PROFILES``; built once for the module."""
    root = tmp_path_factory.mktemp("mixed-release")
    mc = tiny_mc_release(root / "mc", version=MC_VERSION)
    folder = _package(root / "weights")
    return _package(folder, source=mc, names=(MC_MODEL_NAME,))


@pytest.fixture
def installed(monkeypatch, mixed: Path) -> Path:  # type: ignore[no-untyped-def]
    """``mixed`` as the installed package's weights folder."""
    monkeypatch.setattr(models.release, "weights_dir", lambda: mixed)
    return mixed


def test_the_folder_ships_both_models(mixed: Path) -> None:
    entries = read_manifest(mixed)["models"]
    mc = released_entries(mixed, MC_MODEL_NAME)
    assert sorted(mc) == [file_name(k, MC_VERSION, MC_MODEL_NAME) for k in (4, 8)]
    assert all(e["profiles"] == PROFILES and "profile" not in e for e in mc.values())
    assert released_entries(mixed) == released_entries()  # iqt-t1: the package's, as shipped
    assert len(entries) == len(released_entries()) + 2
    newest_t1 = max((str(e["version"]) for e in released_entries().values()), key=version_key)
    assert version_key(MC_VERSION) > version_key(newest_t1)  # newest of all entries: iqt-mc's


def test_newest_release_helpers_pick_iqt_t1(mixed: Path) -> None:
    """What a fresh installation runs for T1-0.36T (the demo's series) and the versions its
    rollbacks walk through are ``iqt-t1``'s, not the newer ``iqt-mc``'s."""
    t1_versions = released_versions()
    assert released_versions(mixed) == t1_versions and MC_VERSION not in t1_versions
    assert released_versions(mixed, MC_MODEL_NAME) == [MC_VERSION]
    k4 = released_k4(mixed)
    assert k4 == released_k4() == released_entry(4)[1]
    assert entry_name(k4) == MODEL_NAME and k4["version"] == t1_versions[0]
    assert k4["profile"] == PROFILE and k4["factor"] == 4
    for factor in (4, 8):
        file, entry = released_entry(factor, mixed)
        assert file == file_name(factor, t1_versions[0]) and entry_name(entry) == MODEL_NAME
        file, entry = released_entry(factor, mixed, name=MC_MODEL_NAME)
        assert file == file_name(factor, MC_VERSION, MC_MODEL_NAME)


def test_registry_rows_and_package_copies_tell_the_models_apart(
    mixed: Path, tmp_path: Path
) -> None:
    rows = released_rows(mixed)
    mc_rows = sorted((MC_MODEL_NAME, MC_VERSION, p, k, "active") for p in PROFILES for k in (4, 8))
    shipped_t1 = [r for r in released_rows() if r[0] == MODEL_NAME]
    assert rows == sorted(shipped_t1 + mc_rows)
    t1_rows = [r for r in rows if r[0] == MODEL_NAME]
    assert {r[2] for r in t1_rows} == {PROFILE}
    assert [r[1] for r in t1_rows if r[4] == "active"] == [released_versions()[0]] * 2
    # the first_release fixture's copy: iqt-t1 0.1.0 alone, whatever else the source holds
    first = _package(tmp_path / "first", {FIRST_VERSION}, source=mixed)
    assert sorted(read_manifest(first)["models"]) == [file_name(k, FIRST_VERSION) for k in (4, 8)]
    only_mc = _package(tmp_path / "mc", source=mixed, names=(MC_MODEL_NAME,))
    assert read_manifest(only_mc)["models"] == released_entries(mixed, MC_MODEL_NAME)


def test_engines_by_name_keep_each_models_versions(monkeypatch, installed: Path) -> None:  # type: ignore[no-untyped-def]
    """``NAME@VERSION`` engines registered from the mixed package: each model's own versions,
    none chosen automatically; automatic choice runs the newest ``iqt-t1`` for T1-0.36T and
    ``iqt-mc`` for the profiles it serves."""
    # a registry of this test's own, without the package's NAME@VERSION engines
    unversioned = {n: r for n, r in pipeline.engines._registry.items() if "@" not in n}
    monkeypatch.setattr(pipeline.engines, "_registry", unversioned)
    monkeypatch.setattr(pipeline.engines, "_instances", {})
    pipeline.engines._register_released_versions()
    names = available_engines()
    versioned = sorted(n for n in names if "@" in n)
    assert versioned == sorted(
        [f"{MODEL_NAME}@{v}" for v in released_versions()] + [f"{MC_MODEL_NAME}@{MC_VERSION}"]
    )
    check_releases_run_by_name(installed)
    engine, why = choose_engine(None, T1_SERIES)
    assert (engine.info.name, engine.info.version) == (MODEL_NAME, released_versions()[0])
    assert "best available" in why
    for profile in PROFILES:
        engine, _ = choose_engine(None, {**T1_SERIES, "profile": profile})
        assert (engine.info.name, engine.info.version) == (MC_MODEL_NAME, MC_VERSION)


def test_models_cli_on_the_mixed_package(cli, plain_k4, installed: Path) -> None:  # type: ignore[no-untyped-def]
    """``dicomnode models`` registers both models on a fresh installation (each ``iqt-mc``
    profile its own active row) and T1-0.36T's activation, rollbacks and verification work as
    with ``iqt-t1`` alone."""
    cli_round_trip(cli, plain_k4, installed)
    for profile in PROFILES:
        listed = _lines(cli("list", "--profile", profile, "--json"))
        assert sorted((r["name"], r["version"], r["factor"], r["state"]) for r in listed) == [
            (MC_MODEL_NAME, MC_VERSION, k, "active") for k in (4, 8)
        ]


@pytest.mark.parametrize(
    "altered",
    [file_name(8, FIRST_VERSION), file_name(4, MC_VERSION, MC_MODEL_NAME)],
    ids=["iqt-t1", "iqt-mc"],
)
def test_a_corrupted_file_of_either_model_refuses_the_package(  # type: ignore[no-untyped-def]
    database, tmp_path: Path, mixed: Path, altered: str
) -> None:
    package = _package(tmp_path / "package", source=mixed, names=None)
    check_corrupted_package_refused(database, tmp_path / "data", package, altered)
