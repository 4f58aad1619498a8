#!/usr/bin/env bash
# GPU run (developer tool): one launch of the dynamic decode kernel under Nsight Compute (`--set full`, clocks left
# alone), per middle storage, at 32K tokens, batch 8, one layer of the Llama mask. Keeps the report, its details page
# and its per-instruction source page (SASS with stall samples, CSV) under $OUT; summarise the CSV anywhere with
# `python benchmarks/ncu_stalls.py $OUT/int8_sass.csv`.
#
#   OUT=/path/to/results bash benchmarks/ncu_profile.sh [LAYER]      # from the repository root, one CUDA GPU with ncu
#
# About 25 s per storage (38 replay passes). Needs a machine whose runtime exposes the hardware counters.
set -uo pipefail

OUT=${OUT:-benchmarks/results/gpu_ncu}
LAYER=${1:-10}
# shellcheck source=benchmarks/stage.sh
source "$(dirname "${BASH_SOURCE[0]}")/stage.sh"

stage_env

for middle in int8 none; do
    stage "ncu_$middle" 200 ncu --clock-control none --kernel-name regex:_leank_decode_kernel --launch-skip 2 \
        --launch-count 1 --set full --import-source no -f -o "$OUT/$middle" \
        $PYTHON benchmarks/ncu_launch.py "$middle" --layer "$LAYER"
    ncu --import "$OUT/$middle.ncu-rep" --page details >"$OUT/${middle}_details.txt" 2>&1
    ncu --import "$OUT/$middle.ncu-rep" --page source --csv --print-source sass >"$OUT/${middle}_sass.csv" 2>&1
    $PYTHON benchmarks/ncu_stalls.py "$OUT/${middle}_sass.csv" | tee "$OUT/${middle}_stalls.txt"
done

echo
echo "=== stages"
cat "$OUT/stages.txt"
