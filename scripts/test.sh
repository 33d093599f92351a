#!/usr/bin/env bash
# Sets up everything the test suite needs on a fresh Debian/Ubuntu machine and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh ".[test]" \
  dcmtk:storescu orthanc:Orthanc dicom3tools:dciodvfy systemd:systemd-analyze \
  orthanc-dicomweb:/usr/share/orthanc/plugins/libOrthancDicomWeb.so
.venv/bin/ruff check .
.venv/bin/python -m pytest -q "$@"
