#!/usr/bin/env bash
# README test command: create .venv, install rsvl with its dev extras, run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e '.[dev]'
# Headless Chromium for tests/test_report.py (renders report.html; the test skips without it).
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    SUDO=""; if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; fi
    { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium; } >/dev/null 2>&1 \
        || echo "warning: could not install chromium (apt-get); tests/test_report.py will skip its browser check"
fi
# The real Triton server for tests/test_triton.py (its own numpy<2 environment).
bash scripts/setup_triton_env.sh || echo "warning: no Triton environment; tests/test_triton.py will skip with the reason"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
# The suite writes paper-scale checkpoints (up to 1.8 GB for one test, removed when it passes):
# say how much room there is, so that a full disk reads as a full disk and not as failing tests.
df -h . "${TMPDIR:-/tmp}" | awk 'NR == 1 || !seen[$0]++' || true
python -m pytest -q -ra "$@"
