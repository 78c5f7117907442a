#!/usr/bin/env bash
# Create .venv and install the package: the pinned CPU torch first (from this machine's disk; an unpinned
# torch pulls a multi-GB CUDA build), then the project with the extras given as $1 (e.g. "[test]").
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".${1:-}"
