# Run 1: branch biased-mma-init (working tree: int8 codes read as code + 1152 by byte permutes alone for 16-bit
# models) against main (.ws/old = `git archive main src` of 76ad06c), interleaved; then the branch's int8 CUDA tests.
set -uo pipefail
RESULTS=$OUT
OUT=/tmp/w
source benchmarks/stage.sh
stage_env
B="-m leank_hf.cli.main bench kernel --contexts 32k --batches 8 --rep-ms 25"
OLD="env PYTHONPATH=$PWD/.ws/old/src"
stage new1 90 $PYTHON $B --middle-quant int8 fp8 --output-dir $OUT/new1
stage old1 60 $OLD $PYTHON $B --middle-quant int8 --output-dir $OUT/old1
stage new2 45 $PYTHON $B --middle-quant int8 --output-dir $OUT/new2
stage old2 45 $OLD $PYTHON $B --middle-quant int8 --output-dir $OUT/old2
stage t_kernel 150 $PYTHON -m pytest -q -p no:cacheprovider --tb=short -m "not slow" -k "int8 and not long_context" tests/test_triton_decode.py
stage t_static 170 $PYTHON -m pytest -q -p no:cacheprovider --tb=short -m "not slow" -k "int8 and not long_context" tests/test_quantized_static.py
cat $OUT/stages.txt
for k in new1 old1 new2 old2; do echo "## $k"; grep -E "^\| 32768|copy bandwidth" $OUT/$k/kernel.md | cut -c1-260; done > $OUT/summary.txt
cat $OUT/summary.txt
for t in t_kernel t_static; do echo "## $t"; grep -hE "passed|failed|error|FAILED" $OUT/$t.log | tail -8; done > $OUT/tests.txt
cat $OUT/tests.txt
cp $OUT/env.log $OUT/summary.txt $OUT/stages.txt $OUT/tests.txt "$RESULTS/"
for k in new1 old1 new2 old2; do cp $OUT/$k/kernel.json "$RESULTS/$k.json"; done
