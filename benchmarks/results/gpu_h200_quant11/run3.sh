# Run 3: clocks and power per code-byte pattern (scripts/clock_probe.py); bench kernel with the quantized random codes,
# main (working tree) against branch biased-mma-init (.ws/new, rebased on it), interleaved; the auto-compiled int8
# generate test on CUDA.
set -uo pipefail
RESULTS=$OUT
OUT=/tmp/w
source benchmarks/stage.sh
stage_env
stage clocks 100 $PYTHON benchmarks/results/gpu_h200_quant11/scripts/clock_probe.py
B="-m leank_hf.cli.main bench kernel --contexts 32k --batches 8 --rep-ms 25"
NEW="env PYTHONPATH=$PWD/.ws/new/src"
stage main1 90 $PYTHON $B --middle-quant int8 fp8 --output-dir $OUT/main1
stage new1 60 $NEW $PYTHON $B --middle-quant int8 --output-dir $OUT/new1
stage main2 45 $PYTHON $B --middle-quant int8 fp8 --output-dir $OUT/main2
stage new2 45 $NEW $PYTHON $B --middle-quant int8 --output-dir $OUT/new2
stage t_gpu 200 $PYTHON -m pytest -q -p no:cacheprovider --tb=short -m gpu -k int8 tests/test_quantized_static.py
cat $OUT/stages.txt
for k in main1 new1 main2 new2; do echo "## $k"; grep -E "^\| 32768|copy bandwidth" $OUT/$k/kernel.md | cut -c1-260; done > $OUT/summary.txt
cat $OUT/summary.txt
grep -hE "passed|failed|error|FAILED" $OUT/t_gpu.log | tail -5
cp $OUT/env.log $OUT/summary.txt $OUT/stages.txt $OUT/clocks.log $OUT/t_gpu.log "$RESULTS/"
for k in main1 new1 main2; do cp $OUT/$k/kernel.json "$RESULTS/$k.json"; done
