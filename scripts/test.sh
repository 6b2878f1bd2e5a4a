#!/usr/bin/env bash
# README test command: create .venv, install rsvl with its dev extras, run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e '.[dev]'
# The real Triton server for tests/test_triton.py (its own numpy<2 environment).
bash scripts/setup_triton_env.sh || echo "warning: no Triton environment; tests/test_triton.py will skip with the reason"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python -m pytest -q -ra "$@"
