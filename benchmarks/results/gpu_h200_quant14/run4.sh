# Run 4: why the compiled FP8 step was slower than int8 in run 2 (9.72 against 8.44 ms at 32K batch 1): the FP8
# build's torch.profiler kernel table (8 layers); then generate at 32K batch 8 with StaticCache, bf16 LeanK and int8
# LeanK in one run (the middle's bytes weigh more there). Files are kept after each stage: the call may end first.
set -uo pipefail
RESULTS=$OUT
OUT=/tmp/w
source benchmarks/stage.sh
stage_env
keep() { cp "$OUT/stages.txt" "$@" "$RESULTS/" 2>/dev/null || true; }
keep $OUT/env.log
stage prof_fp8 120 $PYTHON benchmarks/profile_decode.py --method leank_static_compiled_fp8 --context 32768 --batch 1 \
    --steps 6 --layers 8 --out $OUT/prof
keep $OUT/prof/*.txt
stage gen 420 $PYTHON -m leank_hf.cli.main bench generate --contexts 32k --batches 8 \
    --methods static_compiled,leank_static_compiled,leank_static_compiled_int8 \
    --new-tokens 64 --no-max-batch --output-dir $OUT/gen
keep $OUT/gen.log $OUT/gen/*
cat $OUT/stages.txt
