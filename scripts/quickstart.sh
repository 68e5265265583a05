#!/usr/bin/env bash
# README's quickstart: sets up .venv, then runs scripts/quickstart.py.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export TF_CPP_MIN_LOG_LEVEL=2
exec .venv/bin/python scripts/quickstart.py "$@"
