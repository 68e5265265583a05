#!/usr/bin/env bash
# README's first command: sets up .venv, then runs scripts/quickstart.py
# (synthetic data -> TFRecords -> training -> PQ evaluation -> SavedModel ->
# predictions -> clustering view) in WORK_DIR (default ./quickstart_output).
set -euo pipefail
# A WORK_DIR given relative to the caller's directory stays so.
args=("$@")
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
  args[0]="$(realpath -m "$1")"
fi
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export TF_CPP_MIN_LOG_LEVEL=2
exec .venv/bin/python scripts/quickstart.py "${args[@]}"
