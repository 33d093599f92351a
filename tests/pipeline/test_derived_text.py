"""The text of a derived series: the source's character set carried on both formats, and the
label that says how the images were made (AI only when a learned model made them).

A hospital in Japan or Korea sends its patient and study text in ISO 2022 code extensions
(``\\ISO 2022 IR 87``, ``\\ISO 2022 IR 149``: an empty first value, then the extension), which
highdicom refuses as a Specific Character Set; the Secondary Capture output used to fail the
whole job on them. Each case is written to a file, judged by dciodvfy and read back.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from models.engine import EngineInfo, EngineResult
from pipeline.engines import get_engine
from pipeline.io import write_datasets
from pipeline.run import enhance_series
from pipeline.settings import PipelineSettings

FORMATS = ["sc", "mr"]

# (Specific Character Set, PatientName, StudyDescription, SeriesDescription, InstitutionName,
#  bytes the file must hold: the escape sequence that switches to the extension)
CHARSETS = {
    "japanese-kanji": (
        ["", "ISO 2022 IR 87"],
        "Yamada^Tarou=山田^太郎=やまだ^たろう",
        "頭部ＭＲＩ",
        "T1 横断 SE",
        "東京病院",
        b"\x1b$B",
    ),
    "japanese-katakana-kanji": (
        ["ISO 2022 IR 13", "ISO 2022 IR 87"],
        "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう",
        "頭部",
        "T1 AX SE",
        "ﾄｳｷｮｳ",
        b"\x1b$B",
    ),
    "korean": (
        ["", "ISO 2022 IR 149"],
        "Hong^Gildong=洪^吉洞=홍^길동",
        "뇌 MRI",
        "T1 축상 SE",
        "서울병원",
        b"\x1b$)C",
    ),
    "default-repertoire": ("ISO_IR 6", "DOE^JOHN", "BRAIN", "T1 AX SE", "GENERAL", b""),
    "utf-8": ("ISO_IR 192", "Müller^Zoë=山田^太郎", "Schädel", "T1 tra", "Klinikum Köln", b""),
}


def settings(fmt: str = "sc", **output: object) -> PipelineSettings:
    return PipelineSettings.model_validate(
        {"n4": {"enabled": False}, "output": {"format": fmt, **output}}
    )


def _dciodvfy_errors(path: Path) -> list[str]:
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    report = run.stdout + run.stderr
    assert "Image" in report, report  # it recognised the object
    return [line for line in report.splitlines() if line.startswith("Error")]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", list(CHARSETS))
def test_source_character_set_is_carried_and_the_text_survives(series_cache, tmp_path, case, fmt):
    charset, name, study, series, institution, escape = CHARSETS[case]
    source = series_cache()
    for ds in source:
        ds.SpecificCharacterSet = charset
        ds.PatientName = name
        ds.StudyDescription = study
        ds.SeriesDescription = series
        ds.InstitutionName = institution
    # through bytes, as the node's worker reads the spool: the text is encoded, then decoded
    source = [pydicom.dcmread(p) for p in write_datasets(source, tmp_path / "in")]
    assert str(source[0].PatientName) == name  # the test's own data is what it says

    result = enhance_series(source, settings(fmt), "bspline")  # used to raise on sc

    path = write_datasets(result.datasets[:1], tmp_path / "out")[0]
    assert not _dciodvfy_errors(path)
    assert escape in path.read_bytes()
    back = pydicom.dcmread(path)
    expected = charset if isinstance(charset, str) else list(charset)
    carried = back.SpecificCharacterSet
    assert (carried if isinstance(carried, str) else list(carried)) == expected
    assert str(back.PatientName) == name
    assert back.StudyDescription == study
    assert series in back.SeriesDescription
    scanner = [e for e in back.ContributingEquipmentSequence if e.Manufacturer != "dicomnode"]
    assert scanner and scanner[0].InstitutionName == institution
    assert "not acquired" in back.ImageComments


def test_a_source_without_character_set_gives_latin_1(series_cache, tmp_path):
    source = series_cache()
    for ds in source:
        ds.pop("SpecificCharacterSet", None)
    result = enhance_series(source, settings("sc"), "bspline")
    assert result.datasets[0].SpecificCharacterSet == "ISO_IR 100"


class _LearnedEngine:
    """A learned model in miniature: the AI wording must appear for it."""

    @property
    def info(self) -> EngineInfo:
        return EngineInfo("test-net", "2.0.0", "ab" * 32, learned=True)

    @property
    def supported_factors(self) -> tuple[int, ...]:
        return (4,)

    def upsample(self, volume, factor, slice_thickness_ratio=1.0):  # type: ignore[no-untyped-def]
        return EngineResult(np.repeat(volume, factor, axis=0), consistency_psnr_db=33.0)


def test_bspline_says_it_is_classical():
    assert get_engine("bspline").info.learned is False
    assert EngineInfo("plug-in", "1").learned is True  # an engine that does not say: AI label


@pytest.mark.parametrize("fmt", FORMATS)
def test_classical_interpolation_is_not_called_ai(series_cache, fmt):
    ds = enhance_series(series_cache(), settings(fmt), "bspline").datasets[5]
    ours = [e for e in ds.ContributingEquipmentSequence if e.Manufacturer == "dicomnode"][0]
    texts = {
        "SeriesDescription": ds.SeriesDescription,
        "ImageComments": ds.ImageComments,
        "DerivationDescription": ds.DerivationDescription,
        "ContributionDescription": ours.ContributionDescription,
    }
    for keyword, text in texts.items():
        assert "AI-enhanced" not in text, keyword
        assert "AI model" not in text.replace("no AI model", ""), keyword
        assert text.startswith("Interpolated"), keyword
    assert ds.SeriesDescription == "Interpolated T1 AXIAL SE IQT bspline x4"
    assert "classical interpolation, no AI model" in ds.ImageComments
    assert "bspline 1.0.0" in ds.ImageComments and "not acquired" in ds.ImageComments
    assert "interpolation x4" in ds.DerivationDescription


def test_learned_model_keeps_the_ai_label(series_cache):
    ds = enhance_series(series_cache(), settings("sc"), _LearnedEngine()).datasets[5]
    assert ds.SeriesDescription == "AI-enhanced T1 AXIAL SE IQT test-net x4"
    assert ds.ImageComments.startswith("AI-enhanced: computed by the AI model test-net 2.0.0")
    assert ds.DerivationDescription.startswith("AI-enhanced: Through-plane super-resolution x4")
    ours = [e for e in ds.ContributingEquipmentSequence if e.Manufacturer == "dicomnode"][0]
    assert ours.ContributionDescription.startswith("AI-enhanced: model test-net")


DEFAULT_DIGEST = "ada2e3635eac712f94e26dd5f7fb9dedfdec152214bb9183ff4aff53497b2ef7"
"""``PipelineSettings().digest()`` before ``interpolation_label`` existed: adding the setting
must not change the derived UIDs of any existing configuration (a reprocessed series would
arrive at the PACS as a second series instead of updating the first)."""


def test_interpolation_label_is_configurable(series_cache):
    configured = settings("sc", interpolation_label="Interpoliert", ai_label="KI-berechnet")
    ds = enhance_series(series_cache(), configured, "bspline").datasets[0]
    assert ds.SeriesDescription.startswith("Interpoliert T1")
    assert ds.ImageComments.startswith("Interpoliert: ")
    assert "KI-berechnet" not in ds.ImageComments + ds.SeriesDescription
    # a changed label changes the derived UIDs, like ai_label; the default leaves them as before
    assert PipelineSettings().digest() == DEFAULT_DIGEST
    assert settings(interpolation_label="Interpoliert").digest() != DEFAULT_DIGEST


def test_the_burned_in_label_of_classical_output_is_the_interpolation_label(series_cache):
    def pixels(**output: object) -> np.ndarray:
        result = enhance_series(
            series_cache(), settings("mr", burn_in_label=True, **output), "bspline"
        )
        return result.datasets[20].pixel_array

    plain = pixels()
    assert np.array_equal(pixels(ai_label="SOMETHING ELSE"), plain)  # not the AI label ...
    assert not np.array_equal(pixels(interpolation_label="SOMETHING ELSE"), plain)  # ... this
