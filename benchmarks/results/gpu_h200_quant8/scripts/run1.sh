set -uo pipefail
OUT=${OUT:-/tmp/out}
source benchmarks/stage.sh
stage_env
stage layout 90 $PYTHON benchmarks/value_layout_read.py --output $OUT/layout.json
stage layout_b64 60 $PYTHON benchmarks/value_layout_read.py --block-n 64
stage layout_c8 60 $PYTHON benchmarks/value_layout_read.py --chunks 8 --warps 8
K="-m leank_hf.cli.main bench kernel --contexts 32k --batches 8 --middle-quant int8 fp8 --rep-ms 25"
stage k_main_a 100 $PYTHON $K --output-dir $OUT/k_main_a
stage k_maxw_a 100 env PYTHONPATH=$PWD/.ws/maxw/src $PYTHON $K --output-dir $OUT/k_maxw_a
stage k_main_b 100 $PYTHON $K --output-dir $OUT/k_main_b
stage k_maxw_b 100 env PYTHONPATH=$PWD/.ws/maxw/src $PYTHON $K --output-dir $OUT/k_maxw_b
stage tests_static 200 $PYTHON -m pytest -q -p no:cacheprovider -rs -m "not slow" tests/test_quantized_static.py tests/test_static_cache.py
cat $OUT/stages.txt
for d in k_main_a k_maxw_a k_main_b k_maxw_b; do echo "== $d"; grep -E "^\| 32768|copy bandwidth" $OUT/$d/kernel.md | cut -c1-300; done
grep -hE "passed|failed|error" $OUT/tests_static.log | tail -5
