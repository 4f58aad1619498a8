set -uo pipefail
OUT=${OUT:-/tmp/out}
source benchmarks/stage.sh
T=tests/test_triton_decode.py
stage tests_a 70 $PYTHON -m pytest -q -x -p no:cacheprovider --tb=short tests/test_direct_launch.py $T -k "direct or binaries or argument_count or generate_with or cache_layers_build or cache_built"
stage host 20 $PYTHON benchmarks/launch_host_cost.py --middle-quant fp8
stage k_new 70 $PYTHON -m leank_hf.cli.main bench kernel --contexts 32k --batches 8 --middle-quant int8 fp8 --rep-ms 25 --output-dir $OUT/k_new
stage tests_b 100 $PYTHON -m pytest -q -p no:cacheprovider --tb=short -m "not slow" tests/test_quantized_static.py -k "not auto_compiled"
cat $OUT/stages.txt
grep -hE "passed|failed|error" $OUT/tests_a.log $OUT/tests_b.log | tail -4
grep -E "^\| 32768|Host cost|copy bandwidth" $OUT/k_new/kernel.md | cut -c1-200
