#!/usr/bin/env bash
# Sets up .venv if needed (scripts/setup.sh), then runs the LeanK demo on the embedded SmolLM2 model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/leank-hf demo "$@"
