#!/usr/bin/env bash
# The README's test command: a fresh venv, the CPU torch pin, lint, then the test suite.
# pytest exits 5 when it collects no test; `set -e` turns that into a failure, as it should be.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt -e ".[test]"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest "$@"
