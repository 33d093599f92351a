#!/usr/bin/env bash
# Shared set-up of the quick-start scripts (demo.sh, test.sh) on a fresh Debian/Ubuntu machine:
#   bash scripts/setup.sh PIP_TARGET [DEBIAN_PACKAGE:COMMAND ...]
# installs each Debian package whose command is missing (apt-get; sudo when not root; COMMAND
# may be an absolute path, or glob, of a file the package installs, e.g. an Orthanc plugin or
# /usr/lib/postgresql/*/bin/initdb), creates
# .venv with Python 3.11 and installs the pinned CPU torch wheel and PIP_TARGET (e.g. ".[test]").
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
target="$1"; shift
missing=()
for pair in "$@"; do
  package="${pair%%:*}"; command="${pair#*:}"
  # Orthanc installs to /usr/sbin, which is not on a normal user's PATH
  command -v "$command" >/dev/null || [ -x "/usr/sbin/$command" ] \
    || { [[ "$command" == /* ]] && compgen -G "$command" >/dev/null; } || missing+=("$package")
done
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
.venv/bin/pip install -q -e "$target"
