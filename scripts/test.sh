#!/usr/bin/env bash
# README's test command: sets up .venv, then runs the whole test suite
# (slow tests included). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export TF_CPP_MIN_LOG_LEVEL=2
exec .venv/bin/python -m pytest -q "$@"
