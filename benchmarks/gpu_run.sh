#!/usr/bin/env bash
# GPU run (issue #7): CUDA correctness tests, then the kernel and end-to-end generate benchmarks, all under $OUT.
#
#   OUT=/path/to/results bash benchmarks/gpu_run.sh      # from the repository root, on a machine with one CUDA GPU
#
# Needs torch, triton, transformers, safetensors, huggingface_hub, pytest (+ pytest-xdist if present) already
# installed; uses the source tree through PYTHONPATH (no install, no network). Every stage has a time limit; the whole
# script stays under 9 minutes (limits 20 + 150 + 165 + 180 s). The last lines printed are the result tables.
set -uo pipefail

OUT=${OUT:-benchmarks/results/gpu}
# shellcheck source=benchmarks/stage.sh
source "$(dirname "${BASH_SOURCE[0]}")/stage.sh"

stage_env

# Correctness on CUDA: the kernel (fp32/fp16/bf16, compiled), the cache, attention and generate() tests.
XDIST=$($PYTHON -c 'import xdist' 2>/dev/null && echo "-n 8" || echo "")
stage tests 150 $PYTHON -m pytest -q -p no:cacheprovider $XDIST --junitxml="$OUT/tests.xml" \
    tests/test_triton_decode.py tests/test_naive_attention.py tests/test_attention.py tests/test_cache.py \
    tests/test_generate.py

# Kernel: LeanK vs SDPA (flash) decode, Llama-3.1-8B shapes, all 32 layers of the authors' mask.
stage kernel 165 $PYTHON -m leank_hf.cli.main bench kernel --contexts 8k,32k,128k --batches 1,8,32 --rep-ms 25 \
    --output-dir "$OUT"

# End to end: generate() at 32K tokens, 256 new tokens, batch 1 and 8, plus the largest batch per method.
stage generate 180 $PYTHON -m leank_hf.cli.main bench generate --contexts 32k --methods sdpa,leank --new-tokens 256 --batches 1,8 \
    --output-dir "$OUT"

echo
echo "=== stages"
cat "$OUT/stages.txt"
for table in kernel generate_gpu; do
    if [ -f "$OUT/$table.md" ]; then
        echo
        cat "$OUT/$table.md"
    fi
done
