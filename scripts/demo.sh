#!/usr/bin/env bash
# The README's first command on a fresh Debian/Ubuntu machine with Python 3.11: installs what the
# demo needs (dcmtk's storescu plays the scanner, Orthanc the PACS), sets up .venv with the CPU
# torch wheel and the project, then runs `dicomnode demo`: a low-field T1 series goes scanner ->
# node -> PACS and comes out enhanced beside the original. Arguments go to `dicomnode demo`
# (e.g. --workdir DIR, --port N, --keep-running).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh . dcmtk:storescu orthanc:Orthanc
exec .venv/bin/dicomnode demo "$@"
