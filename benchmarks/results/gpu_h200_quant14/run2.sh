# Run 2: generate at 32K batch 1, compiled static caches, all four rows in one run, after the in-place write fix.
set -uo pipefail
RESULTS=$OUT
OUT=/tmp/w
source benchmarks/stage.sh
stage_env
stage gen 480 $PYTHON -m leank_hf.cli.main bench generate --contexts 32k --batches 1 \
    --methods static_compiled,leank_static_compiled,leank_static_compiled_int8,leank_static_compiled_fp8 \
    --new-tokens 64 --no-max-batch --output-dir $OUT/gen
cat $OUT/stages.txt
cp $OUT/env.log $OUT/stages.txt $OUT/gen.log "$RESULTS/"
cp $OUT/gen/* "$RESULTS/" 2>/dev/null || true
