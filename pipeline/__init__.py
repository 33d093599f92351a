"""Pure image processing for the node: DICOM series -> volume -> enhanced derived series.

No network and no database (DESIGN.md). The job runner calls ``pipeline.run.enhance_series``;
engines are looked up with ``pipeline.engines.get_engine`` / ``choose_engine``.
"""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("dicomnode")
except _metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"
