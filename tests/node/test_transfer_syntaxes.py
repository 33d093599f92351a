"""Every accepted compressed transfer syntax arrives as sent and decodes to identical pixels.

Files are compressed by real encoders (dcmtk's dcmcjpeg, dcmcjpls, dcmcrle, dcmconv; OpenJPEG
through pydicom for JPEG 2000, which dcmtk's free edition lacks). dcmtk's dcmsend sends each in
its own syntax (``--decompress-never``; storescu proposes one compressed syntax per run), and
the spooled copies are decoded with the pydicom plugins the node relies on.
"""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000, JPEG2000Lossless

from tests.conftest import free_port, require_tool
from tests.node.helpers import RunningNode
from tests.node.series_files import write_lowfield_series

DCMTK_ENCODERS = {
    "jpeg-baseline": (["dcmcjpeg", "+eb"], "1.2.840.10008.1.2.4.50", False),
    "jpeg-extended": (["dcmcjpeg", "+ee"], "1.2.840.10008.1.2.4.51", False),
    "jpeg-lossless-sv1": (["dcmcjpeg", "+e1"], "1.2.840.10008.1.2.4.70", True),
    "jpeg-lossless": (["dcmcjpeg", "+el"], "1.2.840.10008.1.2.4.57", True),
    "jpeg-ls-lossless": (["dcmcjpls", "+el"], "1.2.840.10008.1.2.4.80", True),
    "jpeg-ls-near": (["dcmcjpls", "+en"], "1.2.840.10008.1.2.4.81", False),
    "rle": (["dcmcrle"], "1.2.840.10008.1.2.5", True),
    "deflated": (["dcmconv", "+td"], "1.2.840.10008.1.2.1.99", True),
}
PYDICOM_ENCODERS = {
    "jpeg2000-lossless": (JPEG2000Lossless, {}, True),
    "jpeg2000": (JPEG2000, {"j2k_cr": [8]}, False),
}


@pytest.fixture(scope="module")
def compressed(tmp_path_factory, brain) -> dict[str, tuple[Path, Path, bool, str]]:
    """name -> (original file, compressed file, lossless?, transfer syntax UID)."""
    for tool in ("dcmcjpeg", "dcmcjpls", "dcmcrle", "dcmconv"):
        require_tool(tool)
    folder = tmp_path_factory.mktemp("syntaxes")
    sources = write_lowfield_series(brain, folder / "src", seed=40, rows=128)
    made: dict[str, tuple[Path, Path, bool, str]] = {}
    for index, (name, (command, syntax, lossless)) in enumerate(DCMTK_ENCODERS.items()):
        source = sources[index]
        if name == "jpeg-baseline":
            source = _eight_bit_copy(source, folder / "8bit.dcm")
        target = folder / f"{name}.dcm"
        subprocess.run([*command, str(source), str(target)], check=True, capture_output=True)
        made[name] = (source, target, lossless, syntax)
    for offset, (name, (syntax, options, lossless)) in enumerate(PYDICOM_ENCODERS.items()):
        source = sources[len(DCMTK_ENCODERS) + offset]
        ds = pydicom.dcmread(source)
        ds.compress(syntax, **options)
        target = folder / f"{name}.dcm"
        ds.save_as(target)
        made[name] = (source, target, lossless, str(syntax))
    return made


def _eight_bit_copy(source: Path, target: Path) -> Path:
    """JPEG baseline is 8-bit only; scanners send it for 8-bit secondary data."""
    ds = pydicom.dcmread(source)
    pixels = (ds.pixel_array.astype(np.float32) / max(ds.pixel_array.max(), 1) * 255).astype(
        np.uint8
    )
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelData = pixels.tobytes()
    ds.save_as(target)
    return target


def test_every_compressed_syntax_round_trips(tmp_path, compressed):
    require_tool("dcmsend")
    node = RunningNode(tmp_path / "node", free_port()).start()
    try:
        names = sorted(compressed)
        result = subprocess.run(
            ["dcmsend", "-v", "--decompress-never", "-aec", "IQTNODE", "127.0.0.1", str(node.port)]
            + [str(compressed[n][1]) for n in names],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert f"with status SUCCESS  : {len(names)}" in result.stderr
        with sqlite3.connect(node.data_dir / "dicomnode.sqlite3") as conn:
            rows = dict(conn.execute("select sop_instance_uid, path from instances").fetchall())
        for name in names:
            original, sent, lossless, syntax = compressed[name]
            sent_ds = pydicom.dcmread(sent)
            stored = pydicom.dcmread(rows[str(sent_ds.SOPInstanceUID)])
            assert stored.file_meta.TransferSyntaxUID == syntax, name
            assert np.array_equal(stored.pixel_array, sent_ds.pixel_array), name
            if lossless:
                assert np.array_equal(stored.pixel_array, pydicom.dcmread(original).pixel_array), (
                    name
                )
    finally:
        node.stop()
