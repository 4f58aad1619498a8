#!/usr/bin/env bash
# GPU run (issue #14, 8-bit middle region), the second of a session: CUDA checks of both 8-bit kernels, a launch sweep
# with fewer warps and more programs, end-to-end compiled decode at 32K batch 1 (StaticCache vs LeanKStaticCache in
# bf16, int8 and FP8), then a profile of the compiled int8 step, all under $OUT.
#
#   OUT=/path/to/results bash benchmarks/quant_step_gpu_run.sh     # from the repository root, one CUDA GPU
#
# Stage limits 10 + 150 + 75 + 240 + 90 s: under 9.5 minutes.
set -uo pipefail

OUT=${OUT:-benchmarks/results/gpu_quant_step}
# shellcheck source=benchmarks/stage.sh
source "$(dirname "${BASH_SOURCE[0]}")/stage.sh"

stage_env

stage tests 150 $PYTHON -m pytest -q -p no:cacheprovider -rs -m "not slow" --junitxml="$OUT/tests.xml" \
    "tests/test_triton_decode.py::test_kernel_reads_an_8bit_middle" \
    "tests/test_triton_decode.py::test_kernel_refuses_8bit_values_without_the_group_layout" \
    "tests/test_triton_decode.py::test_gpu_8bit_middle_default_blocks_long_context" \
    "tests/test_quantized_static.py::test_triton_custom_op_reads_the_8bit_middle" \
    tests/test_quantized_middle.py

stage tune_int8 75 $PYTHON benchmarks/tune_kernel.py --middle-quant int8 --points 32768:8 --no-report \
    --layers 0,10,20,31 --block-n 64,128 --warps 2,4 --stages 2 --chunking equal,1.15:1024:3

stage generate_32k_b1 240 $PYTHON -m leank_hf.cli.main bench generate --contexts 32k --batches 1 \
    --methods static_compiled,leank_static_compiled,leank_static_compiled_int8,leank_static_compiled_fp8 \
    --new-tokens 64 --no-max-batch --output-dir "$OUT/generate"

TORCH_LOGS=perf_hints,graph_breaks,recompiles,cudagraphs stage profile_int8 90 \
    $PYTHON benchmarks/profile_decode.py --method leank_static_compiled_int8 --context 32768 --batch 1 --steps 8 \
    --out "$OUT/leank_static_compiled_int8"

echo
echo "=== stages"
cat "$OUT/stages.txt"
grep -hiE "skipping cudagraph|graph break|recompil" "$OUT"/profile_*.log | cut -c1-200 | sort | uniq -c | head -20
grep -hE "passed|failed" "$OUT/tests.log" | tail -3
grep -h "^T=" "$OUT/tune_int8.log"
[ -f "$OUT/generate/generate.md" ] && cat "$OUT/generate/generate.md"
