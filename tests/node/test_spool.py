"""The spool's publication step on its own: durable, never overwriting, nothing left over."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomnode.receive.spool import OutOfSpace, SpoolLayout, check_floor, store_new


def test_store_new_keeps_the_first_copy_and_leaves_no_partial_files(tmp_path: Path):
    layout = SpoolLayout(tmp_path / "spool", tmp_path / "quarantine")
    layout.ensure()
    target = layout.path_for("1.2.3", "1.2.3.4")
    assert store_new(target, b"first", layout.root / ".tmp") is True
    assert store_new(target, b"second", layout.root / ".tmp") is False
    assert target.read_bytes() == b"first"
    assert list((layout.root / ".tmp").iterdir()) == []


def test_spool_paths_keep_only_uid_characters(tmp_path: Path):
    layout = SpoolLayout(tmp_path / "spool", tmp_path / "quarantine")
    path = layout.path_for("1.2/../../etc", "1.2.3")
    assert path.parent.parent == layout.root
    assert path.parent.name == "1.2"


def test_floor_refuses_what_would_cross_it(tmp_path: Path):
    with pytest.raises(OutOfSpace):
        check_floor(tmp_path, 1, 2**62)
    check_floor(tmp_path, 1, 0)
