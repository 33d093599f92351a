"""``pipeline.engines.load_engine``: engines built from given weights files (how the node's worker
runs the model registry's versions), through the same registry as ``get_engine``."""

from __future__ import annotations

import pytest

from models.release import file_name, read_manifest, weights_dir
from pipeline.engines import WeightsFile, load_engine, register_engine, unregister_engine
from pipeline.errors import EnhanceError


def _released(version: str, factor: int) -> WeightsFile:
    name = file_name(factor, version)
    entry = read_manifest()["models"][name]
    return WeightsFile(weights_dir() / name, entry["sha256"], entry.get("tile"))


def test_every_iqt_name_builds_from_files_under_the_name_and_version_given():
    files = {4: _released("0.1.0", 4), 8: _released("0.2.0", 8)}
    for kind in ("iqt-t1", "iqt-t1@0.1.0"):
        engine = load_engine(kind, files, name="site-t1", version="7", device="cpu")
        assert (engine.info.name, engine.info.version) == ("site-t1", "7")
        assert engine.supported_factors == (4, 8)
        assert engine.upsample  # a ThroughPlaneEngine, checked by load_engine


def test_engines_without_a_loader_and_unknown_names_are_refused():
    with pytest.raises(EnhanceError) as caught:
        load_engine("bspline", {4: _released("0.2.0", 4)})
    assert caught.value.reason == "engine-invalid"
    with pytest.raises(EnhanceError) as caught:
        load_engine("no-such-engine", {4: _released("0.2.0", 4)})
    assert caught.value.reason == "unknown-engine"


def test_a_registered_loader_gets_the_files_and_the_options():
    seen = {}

    class Fake:
        info = None
        supported_factors = (2,)

        def upsample(self, volume, factor, slice_thickness_ratio=1.0):  # type: ignore[no-untyped-def]
            raise NotImplementedError

    def loader(weights, /, **options):  # type: ignore[no-untyped-def]
        seen.update(weights=dict(weights), options=options)
        return Fake()

    register_engine("fake-files", Fake, from_weights=loader)
    try:
        files = {2: WeightsFile(weights_dir() / "x.safetensors", "ab" * 32)}
        assert isinstance(load_engine("fake-files", files, device="cpu"), Fake)
        assert seen == {"weights": files, "options": {"device": "cpu"}}
    finally:
        unregister_engine("fake-files")
