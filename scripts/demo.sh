#!/usr/bin/env bash
# Install (pinned CPU torch first) and run the demo on the bundled synthetic data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/ihas demo "$@"
