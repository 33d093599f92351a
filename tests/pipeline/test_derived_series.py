"""What a radiologist and a PACS see of a derived series, on both formats (issue 15, items 1-5).

Study attributes carried on Secondary Capture as on MR, signed pixels kept signed, the AI label
in plain words (and burned in on request), UIDs that follow the set of source instances, and a
patient value a scanner got wrong (a birth date "31.12.1931") carried without failing the job
or reaching the log. Series are the small real-brain series of ``conftest``; N4 is off where it
does not matter, so each run takes about a second.
"""

from __future__ import annotations

import logging
import random

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset

from models.engine import EngineInfo, EngineResult
from pipeline.io import write_datasets
from pipeline.run import enhance_series
from pipeline.settings import PipelineSettings

FORMATS = ["sc", "mr"]
STUDY = {
    "StudyDescription": "BRAIN LOWFIELD",
    "AccessionNumber": "ACC-20261130",
    "StudyID": "4711",
    "ReferringPhysicianName": "REFERRER^ANNA",
    "PatientSex": "F",
    "PatientAge": "094Y",
    "PatientWeight": "61",
    "RequestingService": "NEUROLOGY",
}


def settings(fmt: str = "sc", **output: object) -> PipelineSettings:
    return PipelineSettings.model_validate(
        {"n4": {"enabled": False}, "output": {"format": fmt, **output}}
    )


def _with(datasets: list[Dataset], **values: object) -> list[Dataset]:
    for ds in datasets:
        for keyword, value in values.items():
            setattr(ds, keyword, value)
    return datasets


def _reread(datasets: list[Dataset], folder) -> list[Dataset]:  # type: ignore[no-untyped-def]
    """Through bytes, as the node's worker reads the spool: values are raw until accessed."""
    return [pydicom.dcmread(path) for path in write_datasets(datasets, folder)]


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_study_and_patient_attribute_is_carried(series_cache, fmt):
    source = _with(series_cache(), **STUDY)
    result = enhance_series(source, settings(fmt), "bspline")
    for ds in (result.datasets[0], result.datasets[-1]):
        for keyword, value in STUDY.items():
            assert str(ds.get(keyword, "")) == value, keyword
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "StudyDate", "StudyTime"):
            assert ds[keyword].value == source[0][keyword].value, keyword
        assert ds.StudyInstanceUID == source[0].StudyInstanceUID


def _signed(datasets: list[Dataset], offset: int) -> list[Dataset]:
    """The same series stored as signed 16-bit pixels shifted down: real negatives."""
    for ds in datasets:
        values = ds.pixel_array.astype(np.int32) - offset
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 15, 1
        ds.PixelData = values.astype(np.int16).tobytes()
        for keyword in ("WindowCenter", "WindowWidth"):
            del ds[keyword]
    return datasets


@pytest.mark.parametrize("fmt", FORMATS)
def test_signed_pixels_keep_their_negative_values(series_cache, fmt, tmp_path):
    source = _reread(_signed(series_cache(), 800), tmp_path / "in")
    lowest = min(int(ds.pixel_array.min()) for ds in source)
    assert lowest < -700  # the background really is negative
    result = enhance_series(source, settings(fmt), "bspline")
    written = _reread(result.datasets, tmp_path / "out")
    stored = np.stack([ds.pixel_array for ds in written]).astype(np.int32)
    assert all(int(ds.PixelRepresentation) == 1 for ds in written)
    expected = np.clip(np.rint(sitk.GetArrayFromImage(result.output_image)), -32768, 32767)
    np.testing.assert_array_equal(stored, expected)
    assert stored.min() < -700  # background stays where it was, not clipped to 0


def test_unsigned_source_keeps_unsigned_output(series_cache):
    result = enhance_series(series_cache(), settings("mr"), "bspline")
    assert int(result.datasets[0].PixelRepresentation) == 0
    assert result.datasets[0].pixel_array.dtype == np.uint16


class _LearnedEngine:
    """Stands in for a trained model (the AI label is for learned engines only; ``bspline`` is
    labelled as interpolation, see ``test_derived_text``)."""

    @property
    def info(self) -> EngineInfo:
        return EngineInfo("net", "1.0.0", "cd" * 32, learned=True)

    @property
    def supported_factors(self) -> tuple[int, ...]:
        return (4,)

    def upsample(self, volume, factor, slice_thickness_ratio=1.0):  # type: ignore[no-untyped-def]
        return EngineResult(np.repeat(volume, factor, axis=0))


@pytest.mark.parametrize("fmt", FORMATS)
def test_ai_label_in_plain_words_everywhere_a_reader_looks(series_cache, fmt):
    result = enhance_series(series_cache(), settings(fmt), _LearnedEngine())
    ds = result.datasets[5]
    assert ds.SeriesDescription.startswith("AI-enhanced ")
    assert ds.SeriesDescription.endswith("IQT net x4")
    assert "T1 AXIAL SE" in ds.SeriesDescription  # the source's description, after the label
    assert ds.ImageComments.startswith("AI-enhanced: ")
    assert "not acquired" in ds.ImageComments and "net 1.0.0" in ds.ImageComments
    assert ds.DerivationDescription.startswith("AI-enhanced: ")
    ours = [e for e in ds.ContributingEquipmentSequence if e.Manufacturer == "dicomnode"][0]
    assert ours.ContributionDescription.startswith("AI-enhanced: ")
    assert ds.BurnedInAnnotation == "NO"


def test_ai_label_is_configurable_and_survives_a_long_description(series_cache):
    long = "t1_se_tra_5mm_256_p2_lowfield_protocol_for_the_head_coil_v12"
    source = _with(series_cache(), SeriesDescription=long)
    result = enhance_series(source, settings("sc", ai_label="KI-berechnet"), _LearnedEngine())
    description = result.datasets[0].SeriesDescription
    assert len(description) <= 64
    assert description.startswith("KI-berechnet t1_se_tra")
    assert description.endswith("IQT net x4")
    assert result.datasets[0].ImageComments.startswith("KI-berechnet: ")


@pytest.mark.parametrize("fmt", FORMATS)
def test_burned_in_label_on_request_only(series_cache, fmt):
    plain = enhance_series(series_cache(), settings(fmt), "bspline")
    burned = enhance_series(series_cache(), settings(fmt, burn_in_label=True), "bspline")
    ds, before = burned.datasets[20], plain.datasets[20]
    assert ds.BurnedInAnnotation == "YES"
    changed = np.argwhere(ds.pixel_array != before.pixel_array)
    rows, columns = ds.pixel_array.shape
    assert changed.size  # the label is in the pixels ...
    assert changed[:, 0].max() < rows // 4 and changed[:, 1].max() < columns // 2  # ... top left
    # different pixels, different instances: the setting is part of the derived UIDs
    assert burned.series_instance_uid != plain.series_instance_uid


def test_late_slice_gives_new_uids_and_the_same_set_the_same_uids(series_cache):
    full = series_cache()
    first = enhance_series(full[:-1], settings(), "bspline")  # before the late slice arrived
    late = enhance_series(series_cache(), settings(), "bspline")
    assert late.series_instance_uid != first.series_instance_uid
    assert not {d.SOPInstanceUID for d in late.datasets} & {
        d.SOPInstanceUID for d in first.datasets
    }
    shuffled = series_cache()
    random.Random(3).shuffle(shuffled)
    again = enhance_series(shuffled, settings(), "bspline")  # same set, another arrival order
    assert again.series_instance_uid == late.series_instance_uid
    assert [d.SOPInstanceUID for d in again.datasets] == [d.SOPInstanceUID for d in late.datasets]


BAD_BIRTH_DATE = "31.12.1931"


@pytest.mark.parametrize("fmt", FORMATS)
def test_invalid_birth_date_is_carried_and_named_never_quoted(series_cache, fmt, tmp_path, caplog):
    source = _reread(_with(series_cache(), PatientBirthDate=BAD_BIRTH_DATE), tmp_path)
    caplog.set_level(logging.DEBUG)
    result = enhance_series(source, settings(fmt), "bspline")  # no ValueError
    assert all(ds.PatientBirthDate == BAD_BIRTH_DATE for ds in result.datasets)
    ours = [r for r in caplog.records if r.name.startswith(("pipeline", "dicomnode", "models"))]
    named = [r.getMessage() for r in ours if "PatientBirthDate" in r.getMessage()]
    assert named and all(r.levelno == logging.WARNING for r in ours if r.getMessage() in named)
    assert result.source_series_instance_uid in named[0]
    for record in ours:
        assert BAD_BIRTH_DATE not in record.getMessage()
    assert BAD_BIRTH_DATE not in repr(result.metadata())
    assert result.datasets[0].StudyDescription == "BRAIN"
