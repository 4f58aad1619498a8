# Run 1: CUDA tests of the in-place middle writes (be00ccf): the 8-bit kernel tests, both 8-bit cache test files, and
# the static and dynamic cache tests (whose bf16 key write moved from index_copy_ to index_put_).
set -uo pipefail
RESULTS=$OUT
OUT=/tmp/w
source benchmarks/stage.sh
stage_env
keep() { cp "$OUT/stages.txt" "$@" "$RESULTS/"; }
keep $OUT/env.log
stage t_decode 200 $PYTHON -m pytest -q -p no:cacheprovider --tb=short -m "not slow" \
    -k "(8bit or zero_values) and not default_blocks_long_context" tests/test_triton_decode.py
keep $OUT/t_decode.log
stage t_quant 230 $PYTHON -m pytest -q -p no:cacheprovider --tb=short -m "not slow" \
    tests/test_quantized_static.py tests/test_quantized_middle.py
keep $OUT/t_quant.log
stage t_static 140 $PYTHON -m pytest -q -p no:cacheprovider --tb=short -m "not slow" \
    tests/test_static_cache.py tests/test_cache.py
keep $OUT/t_static.log
cat $OUT/stages.txt
for t in t_decode t_quant t_static; do echo "## $t"; grep -hE "passed|failed|error|FAILED" $OUT/$t.log | tail -6; done
