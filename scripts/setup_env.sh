#!/usr/bin/env bash
# Creates .venv (Python 3.11) and installs deeplab2_kmax with its test
# dependencies. Idempotent: re-running only installs what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'
# The official COCO panoptic evaluation, the reference of the PQ tests. Its
# only release pins numpy<2 (TensorFlow 2.20 needs numpy 2) although its
# evaluation code needs only numpy and Pillow, so it goes in without deps.
.venv/bin/python -m pip install --quiet --no-deps 'panopticapi-lite==0.2.0'
