# Run 2: CUDA tests of the uncapped 8-bit default (run 1 ran only the six long-context ones): the 8-bit kernel tests
# and both 8-bit cache test files.
set -uo pipefail
RESULTS=$OUT
OUT=/tmp/w
source benchmarks/stage.sh
stage_env
stage t_decode 230 $PYTHON -m pytest -q -p no:cacheprovider --tb=short -m "not slow" \
    -k "(8bit or zero_values) and not default_blocks_long_context" tests/test_triton_decode.py
stage t_quant 260 $PYTHON -m pytest -q -p no:cacheprovider --tb=short -m "not slow" \
    tests/test_quantized_static.py tests/test_quantized_middle.py
cat $OUT/stages.txt
for t in t_decode t_quant; do echo "## $t"; grep -hE "passed|failed|error|FAILED" $OUT/$t.log | tail -6; done
cp $OUT/env.log $OUT/stages.txt $OUT/t_decode.log $OUT/t_quant.log "$RESULTS/"
