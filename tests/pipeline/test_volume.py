"""pipeline.volume: geometry against SimpleITK's own DICOM reader, encodings, and refusals."""

from __future__ import annotations

import random

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import JPEGLSLossless, RLELossless

from pipeline.errors import PipelineError, VolumeError
from pipeline.sample import build_legacy_multiframe, deterministic_uid, write_series
from pipeline.volume import read_volume


def _sitk_reference(folder) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


@pytest.mark.parametrize("orientation", ["axial", "sagittal", "oblique"])
def test_geometry_matches_simpleitk_reader(series_cache, orientation, tmp_path):
    datasets = series_cache(orientation)
    write_series(datasets, tmp_path)
    reference = _sitk_reference(tmp_path)
    volume = read_volume(datasets)
    image = volume.image
    assert image.GetSize() == reference.GetSize() == (128, 128, 12)
    np.testing.assert_allclose(image.GetSpacing(), (1.8, 1.8, 6.0), atol=1e-4)
    np.testing.assert_allclose(image.GetSpacing(), reference.GetSpacing(), atol=1e-3)
    np.testing.assert_allclose(image.GetOrigin(), reference.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(image.GetDirection(), reference.GetDirection(), atol=1e-5)
    np.testing.assert_allclose(
        sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(reference)
    )
    # The acquisition keeps its own plane: the first direction column is the row cosine.
    iop = [float(v) for v in datasets[0].ImageOrientationPatient]
    np.testing.assert_allclose(np.asarray(image.GetDirection()).reshape(3, 3)[:, 0], iop[:3])
    assert volume.slice_thickness == 5.0
    assert volume.thickness_ratio == pytest.approx(5 / 6)


def test_order_comes_from_positions_not_instance_numbers(series_cache):
    datasets = series_cache()
    expected = read_volume(datasets)
    shuffled = list(datasets)
    random.Random(3).shuffle(shuffled)
    for number, ds in enumerate(shuffled, start=1):
        ds.InstanceNumber = number  # deliberately wrong
    volume = read_volume(shuffled)
    assert [s.sop_instance_uid for s in volume.sources] == [
        s.sop_instance_uid for s in expected.sources
    ]
    np.testing.assert_array_equal(
        sitk.GetArrayViewFromImage(volume.image), sitk.GetArrayViewFromImage(expected.image)
    )
    assert volume.image.GetOrigin() == expected.image.GetOrigin()


def test_legacy_converted_multiframe_gives_the_same_volume(series_cache):
    datasets = series_cache("oblique")
    classic = read_volume(datasets)
    multiframe = build_legacy_multiframe(datasets)
    assert int(multiframe.NumberOfFrames) == 12
    volume = read_volume([multiframe])
    np.testing.assert_allclose(volume.image.GetOrigin(), classic.image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(volume.image.GetSpacing(), classic.image.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(volume.image.GetDirection(), classic.image.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(
        sitk.GetArrayViewFromImage(volume.image), sitk.GetArrayViewFromImage(classic.image)
    )
    assert all(s.frame_number is not None for s in volume.sources)
    assert volume.sources[0].sop_instance_uid == multiframe.SOPInstanceUID


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless], ids=["rle", "jpeg-ls"])
def test_compressed_transfer_syntaxes(series_cache, syntax, tmp_path):
    datasets = series_cache()
    expected = sitk.GetArrayFromImage(read_volume(datasets).image)
    for ds in datasets:
        ds.compress(syntax)
    write_series(datasets, tmp_path)
    reread = [pydicom.dcmread(p) for p in sorted(tmp_path.iterdir())]
    assert reread[0].file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_volume(reread).image), expected)


def test_signed_pixels_and_rescale_are_applied(series_cache):
    datasets = series_cache()
    expected = sitk.GetArrayFromImage(read_volume(datasets).image)
    for ds in datasets:
        stored = ds.pixel_array.astype(np.int16) - 1000  # negative stored values
        ds.PixelRepresentation = 1
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelData = stored.tobytes()
        ds.RescaleIntercept = "2000"
        ds.RescaleSlope = "2"
        ds.RescaleType = "US"
    volume = read_volume(datasets)
    np.testing.assert_allclose(
        sitk.GetArrayFromImage(volume.image), (expected - 1000) * 2 + 2000, atol=1e-3
    )


# --- refusals -----------------------------------------------------------------------------


def _small(series_cache):
    return series_cache(rows=64, columns=64, pixel_spacing=3.6, slices=10)


def _refuse(datasets, reason: str) -> VolumeError:
    with pytest.raises(VolumeError) as caught:
        read_volume(datasets)
    assert caught.value.reason == reason, str(caught.value)
    assert isinstance(caught.value, PipelineError)
    assert caught.value.message
    return caught.value


def test_refuses_mixed_orientations(series_cache):
    datasets = _small(series_cache)
    datasets[3].ImageOrientationPatient = ["1", "0", "0", "0", "0", "-1"]
    error = _refuse(datasets, "mixed-orientation")
    assert error.instances == (datasets[3].SOPInstanceUID,)
    assert datasets[3].SOPInstanceUID in str(error)


def test_refuses_mixed_pixel_sizes(series_cache):
    datasets = _small(series_cache)
    datasets[2].PixelSpacing = ["1.8", "1.8"]
    assert _refuse(datasets, "mixed-pixel-spacing").instances == (datasets[2].SOPInstanceUID,)


def test_refuses_mixed_matrix(series_cache):
    datasets = _small(series_cache)
    datasets[2].Rows = datasets[2].Columns = 32
    datasets[2].PixelData = bytes(32 * 32 * 2)
    assert _refuse(datasets, "mixed-matrix").instances == (datasets[2].SOPInstanceUID,)


def test_refuses_irregular_spacing(series_cache):
    datasets = _small(series_cache)
    position = np.asarray([float(v) for v in datasets[4].ImagePositionPatient])
    datasets[4].ImagePositionPatient = [f"{v:.4f}" for v in position + [0, 0, 1.5]]
    error = _refuse(datasets, "irregular-spacing")
    assert datasets[4].SOPInstanceUID in error.instances


def test_refuses_missing_slice_naming_its_neighbours(series_cache):
    datasets = _small(series_cache)
    del datasets[5]
    error = _refuse(datasets, "missing-slices")
    assert set(error.instances) == {datasets[4].SOPInstanceUID, datasets[5].SOPInstanceUID}
    assert "1 slice(s) missing" in error.message


def test_refuses_localizer_mixed_in(series_cache):
    datasets = _small(series_cache)
    scout = series_cache("sagittal", rows=64, columns=64, pixel_spacing=3.6, slices=10)[5]
    scout.SeriesInstanceUID = datasets[0].SeriesInstanceUID
    scout.SOPInstanceUID = deterministic_uid("scout")
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    error = _refuse(datasets + [scout], "localizer")
    assert error.instances == (scout.SOPInstanceUID,)


def test_refuses_unmarked_localizer_as_mixed_orientation(series_cache):
    datasets = _small(series_cache)
    scout = series_cache("sagittal", rows=64, columns=64, pixel_spacing=3.6, slices=10)[5]
    scout.SeriesInstanceUID = datasets[0].SeriesInstanceUID
    assert _refuse(datasets + [scout], "mixed-orientation").instances == (scout.SOPInstanceUID,)


def test_refuses_second_stack_at_the_same_positions(series_cache):
    datasets = _small(series_cache)
    repeat = series_cache(rows=64, columns=64, pixel_spacing=3.6, slices=10, seed=99)
    for ds in repeat:
        ds.SeriesInstanceUID = datasets[0].SeriesInstanceUID
    error = _refuse(datasets + repeat, "second-stack")
    assert datasets[0].SOPInstanceUID in error.instances
    assert repeat[0].SOPInstanceUID in error.instances


def test_refuses_second_stack_shifted_in_plane(series_cache):
    datasets = _small(series_cache)
    for ds in datasets[6:]:
        position = np.asarray([float(v) for v in ds.ImagePositionPatient])
        ds.ImagePositionPatient = [f"{v:.4f}" for v in position + [20.0, 0, 0]]
    error = _refuse(datasets, "second-stack")
    assert set(error.instances) == {ds.SOPInstanceUID for ds in datasets[6:]}


def test_refuses_too_few_slices(series_cache):
    _refuse(_small(series_cache)[:5], "too-few-slices")


def test_refuses_2d_only(series_cache):
    datasets = _small(series_cache)
    assert _refuse(datasets[:1], "2d-only").instances == (datasets[0].SOPInstanceUID,)


def test_refuses_absurd_sizes(series_cache):
    datasets = _small(series_cache)
    for ds in datasets:
        ds.PixelSpacing = ["45", "45"]
    assert "pixel spacing" in _refuse(datasets, "absurd-size").message


def test_refuses_missing_geometry(series_cache):
    datasets = _small(series_cache)
    del datasets[1].ImagePositionPatient
    assert _refuse(datasets, "missing-geometry").instances == (datasets[1].SOPInstanceUID,)


def test_refuses_mixed_series_and_empty_input(series_cache):
    datasets = _small(series_cache)
    datasets[0].SeriesInstanceUID = deterministic_uid("other series")
    assert _refuse(datasets, "mixed-series").instances == (datasets[0].SOPInstanceUID,)
    _refuse([], "empty")
