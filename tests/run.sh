#!/usr/bin/env bash
# The README's test command: install into .venv and run the CPU test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q -r requirements.txt -e .
export PATH="$PWD/.venv/bin:$PATH" GLOG_v=3
exec .venv/bin/python -m pytest -q -ra --durations=15 "$@"
