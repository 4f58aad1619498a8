#!/usr/bin/env bash
# GPU run (issue #14, second part): where the compiled int8 step's extra time goes, and the batch-8 end-to-end rows.
# At 32K batch 1 the compiled LeanKStaticCache step took 12.9 ms with an int8 middle against 8.5 ms in bf16, far more
# than the kernels' difference (benchmarks/results/gpu_h200_quant/notes.md).
#
#   OUT=/path/to/results bash benchmarks/quant_step_gpu_run.sh      # from the repository root, one CUDA GPU
#
# Stage limits 20 + 150 + 150 + 240 s: under 9.4 minutes. Uses the source tree through PYTHONPATH (no install).
set -uo pipefail

OUT=${OUT:-benchmarks/results/gpu_quant_step}
# shellcheck source=benchmarks/stage.sh
source "$(dirname "${BASH_SOURCE[0]}")/stage.sh"

stage env 20 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; git rev-parse --short HEAD"

# One profile per storage, same shape; TORCH_LOGS names skipped CUDA graphs, graph breaks and recompilations.
for method in leank_static_compiled_int8 leank_static_compiled; do
    TORCH_LOGS=perf_hints,graph_breaks,recompiles,cudagraphs stage "profile_$method" 150 \
        $PYTHON benchmarks/profile_decode.py --method "$method" --context 32768 --batch 1 --steps 8 --out "$OUT/$method"
done

stage generate_32k_b8 240 $PYTHON -m leank_hf.cli.main bench generate --contexts 32k --batches 8 \
    --methods leank_static_compiled,leank_static_compiled_int8 --new-tokens 64 --no-max-batch --output-dir "$OUT/generate"

echo
echo "=== stages"
cat "$OUT/stages.txt"
grep -hiE "skipping cudagraph|graph break|recompil" "$OUT"/profile_*.log | cut -c1-200 | sort | uniq -c | head -20
grep -h "tok/s" "$OUT/generate_32k_b8.log" | grep -v "^\["
