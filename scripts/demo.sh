#!/usr/bin/env bash
# The README's first command on a fresh Debian/Ubuntu machine with Python 3.11: installs what the
# demo needs (dcmtk's storescu plays the scanner, Orthanc the PACS), sets up .venv with the CPU
# torch wheel and the project, then runs `dicomnode demo`: a low-field T1 series goes scanner ->
# node -> PACS and comes out enhanced beside the original. Arguments go to `dicomnode demo`
# (e.g. --workdir DIR, --port N, --keep-running).
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
missing=()
command -v storescu >/dev/null || missing+=(dcmtk)
command -v Orthanc >/dev/null || [ -x /usr/sbin/Orthanc ] || missing+=(orthanc)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "installing ${missing[*]} with apt-get" >&2
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
# Pinned: this version is a local CPU wheel; a looser requirement pulls GBs of CUDA packages.
.venv/bin/pip install -q "torch==2.13.0"
.venv/bin/pip install -q -e .
exec .venv/bin/dicomnode demo "$@"
