set -uo pipefail
OUT=${OUT:-/tmp/out}
source benchmarks/stage.sh
stage_env
B="-m leank_hf.cli.main bench kernel --contexts 32k --batches 8 --middle-quant int8 --rep-ms 25"
OLD="env PYTHONPATH=$PWD/.ws/old/src"
stage k_new1 90 $PYTHON $B --output-dir $OUT/k_new1
stage k_old1 80 $OLD $PYTHON $B --output-dir $OUT/k_old1
stage k_new2 50 $PYTHON $B --output-dir $OUT/k_new2
stage k_old2 50 $OLD $PYTHON $B --output-dir $OUT/k_old2
P="$PYTHON -m pytest -q -p no:cacheprovider --tb=short -m not\ slow"
stage t_kernel 110 $PYTHON -m pytest -q -p no:cacheprovider --tb=short -m "not slow" tests/test_triton_decode.py -k "8bit or all_zero or long_context"
stage t_static 120 $PYTHON -m pytest -q -p no:cacheprovider --tb=short -m "not slow" tests/test_quantized_static.py tests/test_quantized_middle.py
cat $OUT/stages.txt
for k in k_new1 k_old1 k_new2 k_old2; do echo "## $k"; grep -E "^\| 32768|Host cost" $OUT/$k.log | cut -c1-200; done
grep -hE "passed|failed|error|FAILED" $OUT/t_kernel.log $OUT/t_static.log | tail -12
