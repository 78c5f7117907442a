#!/usr/bin/env bash
# Install (pinned CPU torch first, from this machine's disk) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[test]"
python -m pytest -q -p no:cacheprovider "$@"
