#!/usr/bin/env bash
# README demo command: install the runtime + export tools, then run the embedded demo
# (synthetic 2048x2048 optical+SAR scene -> bundle of the shipped tsmnet-tiny -> rsvl-infer -> mIoU).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e '.[export]'
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
rsvl-demo "$@"
