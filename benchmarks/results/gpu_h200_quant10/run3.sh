# Run 3: every `gpu`-marked test (the notebook test's module needs nbformat, absent on the device machine), the static
# and 8-bit cache test files on CUDA, and two more kernel samples at 32K batch 8.
set -uo pipefail
RESULTS=$OUT
OUT=/tmp/w
source benchmarks/stage.sh
stage_env
P="$PYTHON -m pytest -q -p no:cacheprovider --tb=short"
stage t_gpu 200 $P -m gpu tests/ --ignore tests/test_notebook.py
stage t_static 200 $P -m "not slow and not gpu" tests/test_quantized_static.py tests/test_quantized_middle.py tests/test_static_cache.py
B="-m leank_hf.cli.main bench kernel --contexts 32k --batches 8 --middle-quant int8 fp8 --rep-ms 25"
stage k3 90 $PYTHON $B --output-dir $OUT/k3
stage k4 60 $PYTHON $B --output-dir $OUT/k4
cat $OUT/stages.txt
grep -hE "passed|failed|error|FAILED" $OUT/t_gpu.log $OUT/t_static.log | tail -20
for k in k3 k4; do echo "## $k"; grep -E "^\| 32768|Host cost|copy bandwidth" $OUT/$k/kernel.md | cut -c1-300; done
cp $OUT/env.log $OUT/t_gpu.log $OUT/t_static.log "$RESULTS/"
cp $OUT/k3/kernel.md "$RESULTS/kernel_k3.md"; cp $OUT/k4/kernel.md "$RESULTS/kernel_k4.md"
