#!/usr/bin/env bash
# GPU run (issue #14, 8-bit middle region) at the default launch settings: the decode-attention kernel at
# Llama-3.1-8B shapes with the middle in bf16, int8 and FP8 e4m3 against SDPA, the static custom op on CUDA, and
# compiled generate() at 32K tokens, batch 1 (StaticCache, LeanK bf16 and int8 middle), all under $OUT.
#
#   OUT=/path/to/results bash benchmarks/quant_gpu_run.sh      # from the repository root, one CUDA GPU (H200: FP8)
#
# Needs torch, triton, transformers, safetensors, huggingface_hub, pytest already installed; uses the source tree
# through PYTHONPATH (no install, no network). Stage limits 10 + 120 + 80 + 330 s: under 9 minutes. Targets
# (issue #14): 32K batch 8, int8 row: speedup vs SDPA (graph) >= 2.5x and >= 85% of copy bandwidth.
# The CUDA tests of the kernels' 8-bit numerics and the launch-setting sweeps: benchmarks/occupancy_gpu_run.sh.
set -uo pipefail

OUT=${OUT:-benchmarks/results/gpu_quant}
# shellcheck source=benchmarks/stage.sh
source "$(dirname "${BASH_SOURCE[0]}")/stage.sh"

stage_env

# The target point first: 32K tokens, batch 8, all 32 layers of the authors' Llama mask, bf16 / int8 / fp8 middle.
stage kernel_32k_b8 120 $PYTHON -m leank_hf.cli.main bench kernel --contexts 32k --batches 8 \
    --middle-quant none int8 fp8 --rep-ms 25 --output-dir "$OUT/32k_b8"

# The static kernel (custom op) on an 8-bit middle against the dense reference.
stage tests_static 80 $PYTHON -m pytest -q -p no:cacheprovider -rs -m "not slow" \
    "tests/test_quantized_static.py::test_triton_custom_op_reads_the_8bit_middle"

stage generate_32k_b1 330 $PYTHON -m leank_hf.cli.main bench generate --contexts 32k --batches 1 \
    --methods static_compiled,leank_static_compiled,leank_static_compiled_int8 --new-tokens 64 --no-max-batch \
    --output-dir "$OUT/generate"

echo
echo "=== stages"
cat "$OUT/stages.txt"
for table in 32k_b8/kernel generate/generate_gpu; do
    if [ -f "$OUT/$table.md" ]; then
        echo
        cat "$OUT/$table.md"
    fi
done
