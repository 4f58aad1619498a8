#!/usr/bin/env bash
# GPU run of the compile-capable decode (issue #11): CUDA tests of the static cache, then `leank-hf bench generate`
# with the four methods. From the repository root on a CUDA machine with torch, triton and transformers installed:
#
#   OUT=/path/to/results bash benchmarks/compile_gpu_run.sh [CONTEXTS] [BATCHES] [NEW_TOKENS] [TEST_FILES...]
#
# Uses the source tree through PYTHONPATH (no install, no network); each stage has a time limit.
set -uo pipefail
OUT=${OUT:-benchmarks/results/gpu}
CONTEXTS=${1:-8k,32k}
BATCHES=${2:-1,8}
NEW_TOKENS=${3:-128}
shift $(( $# < 3 ? $# : 3 ))
TESTS=${*:-tests/test_static_cache.py}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
PYTHON=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/env.txt"
$PYTHON -c 'import sys, torch, triton, transformers; print(sys.version.split()[0], "torch", torch.__version__, "triton", triton.__version__, "transformers", transformers.__version__)' | tee -a "$OUT/env.txt"
if [ "$TESTS" != "none" ]; then
  timeout 240 $PYTHON -m pytest -q -p no:cacheprovider -rs $TESTS 2>&1 | tee "$OUT/tests.log" | tail -25
fi
TORCH_LOGS=${TORCH_LOGS:-perf_hints,graph_breaks,recompiles} timeout 520 $PYTHON -m leank_hf.cli.main bench generate --contexts "$CONTEXTS" --batches "$BATCHES" \
  --new-tokens "$NEW_TOKENS" --no-max-batch --output-dir "$OUT" >"$OUT/generate.log" 2>&1
grep -iE "cudagraph|graph break|recompil" "$OUT/generate.log" | sort | uniq -c | head -20
grep -vE "^\s*$|^\[|^  " "$OUT/generate.log" | grep -E "tok/s|^\||floor|saved" | tail -30
