set -uo pipefail
OUT=${OUT:-/tmp/out}
source benchmarks/stage.sh
stage_env
stage t_kernel 200 $PYTHON -m pytest -q -p no:cacheprovider --tb=short -m "not slow" tests/test_triton_decode.py -k "8bit or all_zero or long_context or matches_dense or generate_with or cache_built"
stage t_static 150 $PYTHON -m pytest -q -p no:cacheprovider --tb=short -m "not slow" tests/test_quantized_static.py tests/test_quantized_middle.py
stage t_cache 110 $PYTHON -m pytest -q -p no:cacheprovider --tb=short -m "not slow" tests/test_static_cache.py
cat $OUT/stages.txt
grep -hE "passed|failed|error|FAILED" $OUT/t_kernel.log $OUT/t_static.log $OUT/t_cache.log | tail -15
