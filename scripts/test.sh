#!/usr/bin/env bash
# Sets up .venv if needed (scripts/setup.sh), then runs the linters and the whole test suite, listing each skipped
# test with its reason (-rs). Extra arguments go to pytest. Fails on any lint or test failure, and when pytest runs no
# test (its exit code 5).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest -rs "$@"
