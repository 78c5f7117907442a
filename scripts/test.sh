#!/usr/bin/env bash
# Install (pinned CPU torch first), lint with ruff, and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh "[test]"
.venv/bin/python -m ruff check .
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
