#!/usr/bin/env bash
# GPU run (issue #14, 8-bit middle region): CUDA correctness of the 8-bit paths, then the decode-attention kernel at
# Llama-3.1-8B shapes with the middle in bf16, int8 and FP8 e4m3 against SDPA, all under $OUT.
#
#   OUT=/path/to/results bash benchmarks/quant_gpu_run.sh      # from the repository root, one CUDA GPU (H200: FP8)
#
# Needs torch, triton, transformers, safetensors, huggingface_hub, pytest already installed; uses the source tree
# through PYTHONPATH (no install, no network). Stage limits 20 + 200 + 120 + 2 x 75 + 80 s: under 9.5 minutes. The last
# lines printed are the result tables. Targets (issue #14): 32K batch 8, int8 row (the recommended format; fp8 beside
# it): speedup vs SDPA (graph) >= 2.5x and >= 85% of copy bandwidth (the bytes limit there is 3.18x; bf16 LeanK's is 1.73x).
set -uo pipefail

OUT=${OUT:-benchmarks/results/gpu_quant}
# shellcheck source=benchmarks/stage.sh
source "$(dirname "${BASH_SOURCE[0]}")/stage.sh"

stage env 20 bash -c "nvidia-smi --query-gpu=name,memory.total,compute_cap,driver_version --format=csv
$PYTHON -c 'import sys, torch, triton, transformers; print(sys.version.split()[0], \"torch\", torch.__version__, \"triton\", triton.__version__, \"transformers\", transformers.__version__, torch.cuda.get_device_name(), torch.cuda.get_device_capability())'
git rev-parse --short HEAD 2>/dev/null || true"

# Correctness on CUDA: both kernels on 8-bit middles (int8 and fp8) against the dense reference and the PyTorch
# path (queries up to 2^17 included), the caches and generate() against the quantizing reference; the auto-compiled
# static cache vs eager last. The slow inductor cases of test_quantized_static.py are left to CI's CPU run.
stage tests 200 $PYTHON -m pytest -q -p no:cacheprovider -rs -m "not slow" --junitxml="$OUT/tests.xml" \
    "tests/test_triton_decode.py::test_kernel_reads_an_8bit_middle" \
    "tests/test_triton_decode.py::test_gpu_8bit_middle_default_blocks_long_context" \
    tests/test_quantized_middle.py tests/test_naive_attention.py tests/test_quantized_static.py

# The target point first: 32K tokens, batch 8, all 32 layers of the authors' Llama mask, bf16 / int8 / fp8 middle.
stage kernel_32k_b8 120 $PYTHON -m leank_hf.cli.main bench kernel --contexts 32k --batches 8 \
    --middle-quant none int8 fp8 --rep-ms 25 --output-dir "$OUT/32k_b8"

# Launch settings of the 8-bit kernels at the target point (defaults: launch.tile_settings): one line per setting.
for quant in int8 fp8; do
    stage "tune_$quant" 75 $PYTHON benchmarks/tune_kernel.py --middle-quant "$quant" --points 32768:8 --no-report \
        --layers 0,10,20,31 --block-n 64,128 --warps 4,8 --stages 2,3 --ctas-per-sm 8
done

# A wider picture on 4 of the layers: 8K / 128K and batch 1 / 32.
stage kernel_grid 80 $PYTHON -m leank_hf.cli.main bench kernel --contexts 8k,32k,128k --batches 1,8,32 \
    --layers 0,10,20,31 --middle-quant none int8 fp8 --rep-ms 15 --output-dir "$OUT/grid"

echo
echo "=== stages"
cat "$OUT/stages.txt"
for table in 32k_b8/kernel grid/kernel; do
    if [ -f "$OUT/$table.md" ]; then
        echo
        cat "$OUT/$table.md"
    fi
done
