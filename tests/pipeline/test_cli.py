"""``dicomnode enhance``: files in, derived series and preview out; errors exit non-zero."""

from __future__ import annotations

import pydicom
import pytest
from typer.testing import CliRunner

from dicomnode.cli import app
from pipeline.sample import write_series


@pytest.fixture(scope="module")
def series_folder(series_cache, tmp_path_factory):
    folder = tmp_path_factory.mktemp("input")
    write_series(series_cache(), folder)
    (folder / "README.txt").write_text("not DICOM; must be skipped")
    return folder


def _output(result) -> str:
    try:
        return result.output + result.stderr
    except ValueError:  # older click without separate stderr
        return result.output


def _fast_config(tmp_path):
    config = tmp_path / "node.toml"
    config.write_text("[pipeline.n4]\niterations = [10, 10]\n")
    return config


def test_enhance_writes_series_and_preview(series_folder, tmp_path):
    out, preview = tmp_path / "out", tmp_path / "preview.png"
    result = CliRunner().invoke(
        app,
        [
            "enhance",
            str(series_folder),
            "--out",
            str(out),
            "--model",
            "bspline",
            "--format",
            "mr",
            "--preview",
            str(preview),
            "--config",
            str(_fast_config(tmp_path)),
        ],
    )
    text = _output(result)
    assert result.exit_code == 0, text
    files = sorted(out.glob("*.dcm"))
    assert len(files) == 48
    first = pydicom.dcmread(files[0])
    assert first.SOPClassUID == pydicom.uid.MRImageStorage
    assert preview.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and preview.stat().st_size > 20_000
    assert "bspline" in text and "x4" in text
    assert "SECRET" not in text and "PID-SECRET-4711" not in text


def test_enhance_without_model_says_which_engine(series_folder, tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "enhance",
            str(series_folder),
            "--out",
            str(tmp_path / "o"),
            "--config",
            str(_fast_config(tmp_path)),
        ],
    )
    assert result.exit_code == 0, _output(result)
    assert "best available" in _output(result)
    assert pydicom.dcmread(next((tmp_path / "o").glob("*.dcm"))).SOPClassUID == (
        pydicom.uid.SecondaryCaptureImageStorage
    )


def test_refused_series_exits_non_zero_naming_the_problem(series_cache, tmp_path):
    datasets = series_cache()
    removed = datasets.pop(6)
    write_series(datasets, tmp_path / "in")
    result = CliRunner().invoke(
        app, ["enhance", str(tmp_path / "in"), "--out", str(tmp_path / "o")]
    )
    text = _output(result)
    assert result.exit_code == 2, text
    assert "missing-slices" in text and datasets[5].SOPInstanceUID in text
    assert removed.SOPInstanceUID not in text
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("arguments", "reason"),
    [
        (["/nonexistent/folder"], "not-found"),
        (["--model", "no-such-engine"], "unknown-engine"),
    ],
)
def test_bad_arguments_exit_non_zero(series_folder, tmp_path, arguments, reason):
    inputs = arguments if arguments[0].startswith("/") else [str(series_folder), *arguments]
    result = CliRunner().invoke(app, ["enhance", *inputs, "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and reason in _output(result), _output(result)


def test_help():
    result = CliRunner().invoke(app, ["enhance", "--help"])
    assert result.exit_code == 0 and "--preview" in result.output
