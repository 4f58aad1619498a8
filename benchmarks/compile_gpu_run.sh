#!/usr/bin/env bash
# GPU run of the compile-capable decode (issue #11): `leank-hf bench generate` with the four methods (DynamicCache +
# sdpa, StaticCache + sdpa auto-compiled, LeanKCache eager, LeanKStaticCache auto-compiled), optionally after the
# CUDA tests. From the repository root on a CUDA machine with torch, triton and transformers installed:
#
#   OUT=/path/to/results bash benchmarks/compile_gpu_run.sh "CONTEXTS:BATCHES:NEW_TOKENS:SECONDS" ... [-- TESTS]
#
# e.g. `bash benchmarks/compile_gpu_run.sh 32k:1,8:128:330 128k:1:64:200`: each spec is one benchmark run, saved under
# $OUT/<contexts>_b<batches>/, with its own time limit. Uses the source tree through PYTHONPATH (no install, no
# network). TORCH_LOGS defaults to graph breaks, recompilations and CUDA-graph hints, grepped from each log.
set -uo pipefail
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
export TORCH_LOGS=${TORCH_LOGS:-perf_hints,graph_breaks,recompiles}
PYTHON=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/env.txt"
$PYTHON -c 'import sys, torch, triton, transformers; print(sys.version.split()[0], "torch", torch.__version__, "triton", triton.__version__, "transformers", transformers.__version__)' | tee -a "$OUT/env.txt"
specs=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do specs+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
if [ $# -gt 0 ]; then
  TORCH_LOGS= timeout 240 $PYTHON -m pytest -q -p no:cacheprovider -rs "$@" 2>&1 | tee "$OUT/tests.log" | tail -5
fi
for spec in "${specs[@]}"; do
  IFS=: read -r contexts batches new_tokens seconds <<<"$spec"
  dir="$OUT/${contexts//,/-}_b${batches//,/-}"
  mkdir -p "$dir"
  timeout "$seconds" $PYTHON -m leank_hf.cli.main bench generate --contexts "$contexts" --batches "$batches" \
    --new-tokens "$new_tokens" --no-max-batch --output-dir "$dir" >"$dir/generate.log" 2>&1
  echo "=== $spec: rc $?"
  grep -iE "skipping cudagraph|graph break|recompil" "$dir/generate.log" | grep -v "^\s*-" | cut -c1-200 | sort | uniq -c | head -8
  grep -E "tok/s" "$dir/generate.log" | grep -v "^\[" | tail -12
done
