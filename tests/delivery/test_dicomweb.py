"""What a web viewer (OHIF over DICOMweb) lists once derived instances reach the PACS.

Orthanc with its DICOMweb plugin (Debian ``orthanc-dicomweb``) is the PACS: the original series
is stored, then the derived one, and QIDO-RS is asked what OHIF's study list asks. Orthanc takes
study attributes from the instances it stores, so a derived instance without StudyDescription
blanks the study's description ("No Description" in OHIF); with the node's patient/study list
on both formats it stays. The AI label is what QIDO returns as the derived SeriesDescription.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicomnode.pacs import DICOMWEB_PLUGIN
from pipeline.io import write_datasets
from pipeline.run import enhance_series
from pipeline.sample import Acquisition, build_series, write_series
from pipeline.settings import PipelineSettings
from tests.conftest import require_tool
from tests.delivery.orthanc import ORTHANC, Orthanc
from tests.node.helpers import storescu

STUDY_DESCRIPTION = "00081030"
SERIES_DESCRIPTION = "0008103E"
ACCESSION_NUMBER = "00080050"


@pytest.fixture
def dicomweb_pacs(tmp_path: Path) -> Iterator[Orthanc]:
    require_tool(ORTHANC)
    require_tool("storescu")
    if not os.path.exists(DICOMWEB_PLUGIN):
        pytest.fail(f"{DICOMWEB_PLUGIN} is missing; scripts/test.sh installs orthanc-dicomweb")
    pacs = Orthanc(tmp_path / "orthanc", plugins=[DICOMWEB_PLUGIN]).start()
    yield pacs
    pacs.stop()


def _value(item: dict, tag: str) -> object:
    return (item.get(tag, {}).get("Value") or [None])[0]


@pytest.mark.parametrize("fmt", ["sc", "mr"])
def test_study_list_keeps_its_description_after_the_derived_series(
    tmp_path, brain, dicomweb_pacs, fmt
):
    acquisition = Acquisition(rows=96, columns=96, pixel_spacing=2.4, slices=10, seed=91)
    source = build_series(acquisition, brain)
    settings = PipelineSettings.model_validate(
        {"n4": {"enabled": False}, "output": {"format": fmt}}
    )
    result = enhance_series(source, settings, "bspline")
    originals = write_series(source, tmp_path / "original")
    derived = write_datasets(result.datasets, tmp_path / "derived")
    storescu(dicomweb_pacs.dicom_port, originals)
    study = str(source[0].StudyInstanceUID)
    query = f"studies?StudyInstanceUID={study}&includefield={STUDY_DESCRIPTION}"  # as OHIF asks
    before = dicomweb_pacs.qido(query)
    assert _value(before[0], STUDY_DESCRIPTION) == "BRAIN"

    storescu(dicomweb_pacs.dicom_port, derived)
    studies = dicomweb_pacs.qido(query)
    assert len(studies) == 1
    assert _value(studies[0], STUDY_DESCRIPTION) == "BRAIN"  # OHIF: not "No Description"
    assert _value(studies[0], ACCESSION_NUMBER) == str(source[0].AccessionNumber)
    series = {
        _value(s, "0020000E"): _value(s, SERIES_DESCRIPTION)
        for s in dicomweb_pacs.qido(f"studies/{study}/series")
    }
    assert series[str(source[0].SeriesInstanceUID)] == acquisition.series_description
    # bspline is classical interpolation, labelled as such (an AI model gets ai_label)
    assert str(series[result.series_instance_uid]).startswith("Interpolated ")
    metadata = dicomweb_pacs.get(
        f"/dicom-web/studies/{study}/series/{result.series_instance_uid}/metadata"
    )
    assert len(metadata) == len(derived)
    assert {_value(m, STUDY_DESCRIPTION) for m in metadata} == {"BRAIN"}
