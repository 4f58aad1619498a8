#!/usr/bin/env bash
# GPU run (issue #14, 8-bit middle region) at the default launch settings: the decode-attention kernel at
# Llama-3.1-8B shapes with the middle in bf16, int8 and FP8 e4m3 against SDPA (32K tokens, batch 8 and 1), the CUDA
# tests of the 8-bit kernels (dynamic and static), and compiled generate() at 32K tokens, batch 1 (StaticCache and
# LeanK with an int8 middle), all under $OUT.
#
#   OUT=/path/to/results bash benchmarks/quant_gpu_run.sh      # from the repository root, one CUDA GPU (H200: FP8)
#
# Needs torch, triton, transformers, safetensors, huggingface_hub, pytest already installed; uses the source tree
# through PYTHONPATH (no install, no network). Stage limits 20 + 120 + 200 + 200 s: under 9 minutes (the fifth #14
# session's run 6 took 73 + 172 + 135 s). Targets (issue #14): 32K batch 8, 8-bit rows: speedup vs SDPA >= 2.5x and
# >= 85% of copy bandwidth. Launch-setting sweeps: benchmarks/tune_kernel.py, benchmarks/occupancy_gpu_run.sh.
set -uo pipefail

OUT=${OUT:-benchmarks/results/gpu_quant}
# shellcheck source=benchmarks/stage.sh
source "$(dirname "${BASH_SOURCE[0]}")/stage.sh"

stage_env

# The target point first: 32K tokens, batch 8 (and 1), all 32 layers of the authors' Llama mask, bf16 / int8 / fp8.
stage kernel 120 $PYTHON -m leank_hf.cli.main bench kernel --contexts 32k --batches 8,1 \
    --middle-quant none int8 fp8 --rep-ms 25 --output-dir "$OUT/kernel"

# Both kernels on an 8-bit middle against the dense reference (the compiled-generate tests excluded: time).
stage cuda_tests 200 $PYTHON -m pytest -q -p no:cacheprovider -rs -m "not slow" tests/test_triton_decode.py \
    tests/test_quantized_static.py -k "(8bit or zero_values or custom_op) and not auto_compiled"

stage generate 200 $PYTHON -m leank_hf.cli.main bench generate --contexts 32k --batches 1 \
    --methods static_compiled,leank_static_compiled_int8 --new-tokens 64 --no-max-batch --output-dir "$OUT/generate"

echo
echo "=== stages"
cat "$OUT/stages.txt"
for table in kernel/kernel generate/generate_gpu; do
    if [ -f "$OUT/$table.md" ]; then
        echo
        cat "$OUT/$table.md"
    fi
done
