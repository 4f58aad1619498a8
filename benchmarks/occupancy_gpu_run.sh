#!/usr/bin/env bash
# GPU run (issue #14): how many programs share an SM. Uncapped, the kernels take 212-224 registers per thread (the
# widest middle loops), so two 4-warp programs fit per SM; `benchmarks/kernel_sass.py --max-registers N` shows which
# caps leave the tile loops free of spills. This sweeps tile size x load stages x register cap x middle chunking at
# 32K tokens, batch 8 (the issue's target point), 4 layers of the Llama mask, for int8, FP8 and bf16 middles.
#
#   OUT=/path/to/results bash benchmarks/occupancy_gpu_run.sh      # from the repository root, one CUDA GPU
#
# Stage limits 20 + 200 + 150 + 90 s: under 8 minutes. One line per setting (graph replay, mean of the layers).
# First run (commit dc78c9a's parent kernels: 11 barriers per 8-bit tile) swept wider: see
# benchmarks/results/gpu_h200_quant3/notes.md.
set -uo pipefail

OUT=${OUT:-benchmarks/results/gpu_occupancy}
# shellcheck source=benchmarks/stage.sh
source "$(dirname "${BASH_SOURCE[0]}")/stage.sh"

stage_env

sweep() {  # sweep QUANT BLOCK_N STAGES REGISTERS (0: uncapped) [WARPS]
    local quant=()
    [ "$1" != none ] && quant=(--middle-quant "$1")
    $PYTHON benchmarks/tune_kernel.py "${quant[@]}" --points 32768:8 --no-report --layers 0,10,20,31 \
        --block-n "$2" --warps "${5:-4}" --stages "$3" --max-registers "$4" --chunking equal,1.15:1024:3
}
export -f sweep
export PYTHON

# CUDA correctness of the 8-bit numerics (fp16 operands; the interpreter computes in fp32) at the default settings.
stage tests 200 $PYTHON -m pytest -q -p no:cacheprovider -rs -m "not slow" \
    "tests/test_triton_decode.py::test_gpu_8bit_middle_default_blocks_long_context" \
    "tests/test_triton_decode.py::test_kernel_reads_an_8bit_middle" \
    "tests/test_quantized_static.py::test_triton_custom_op_reads_the_8bit_middle"

stage tune_int8 150 bash -c "sweep int8 128 2,3 168; sweep int8 64 2,3 128; sweep int8 32 3 96; sweep int8 128 2 128 8"
stage tune_fp8 90 bash -c "sweep fp8 128 2,3 168; sweep fp8 64 3 128"

echo
echo "=== stages"
cat "$OUT/stages.txt"
