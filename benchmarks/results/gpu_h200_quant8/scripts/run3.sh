set -uo pipefail
OUT=${OUT:-/tmp/out}
source benchmarks/stage.sh
stage_env
T=tests/test_triton_decode.py
K="-m leank_hf.cli.main bench kernel --contexts 32k --batches 8,1 --middle-quant none int8 fp8 --rep-ms 25"
stage k_new_a 120 $PYTHON $K --output-dir $OUT/k_new_a
stage k_old 120 env PYTHONPATH=$PWD/.ws/old/src $PYTHON $K --output-dir $OUT/k_old
for q in fp8; do stage host_$q 25 $PYTHON benchmarks/launch_host_cost.py --middle-quant $q; done
stage host_old 25 env PYTHONPATH=$PWD/.ws/old/src $PYTHON .ws/old/benchmarks/launch_host_cost.py --middle-quant fp8
stage tests 300 $PYTHON -m pytest -q -p no:cacheprovider -rs -m "not slow" tests/test_direct_launch.py $T tests/test_quantized_middle.py tests/test_quantized_static.py
cat $OUT/stages.txt
grep -hE "passed|failed|error" $OUT/tests.log | tail -3
for d in k_new_a k_old; do echo "== $d"; grep -E "^\| 32768|Host cost|copy bandwidth" $OUT/$d/kernel.md | cut -c1-200; done
grep -h "middle," $OUT/host_*.log
