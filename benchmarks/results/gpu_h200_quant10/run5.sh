# Run 5: int8 codes stored offset by 128 (uint8; no xor in int8_to_half) against HEAD (.ws/old = `git archive HEAD
# src` of 7629b99), interleaved; then the int8 CUDA tests of the new storage.
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
stage tests 220 $PYTHON -m pytest -q -p no:cacheprovider --tb=short -m "not slow" tests/test_triton_decode.py tests/test_quantized_static.py tests/test_quantized_middle.py -k "int8 and not long_context"
cat $OUT/stages.txt
for k in new1 old1 new2; do echo "## $k"; grep -E "^\| 32768|copy bandwidth" $OUT/$k/kernel.md | cut -c1-260; done > $OUT/summary.txt
cat $OUT/summary.txt
grep -hE "passed|failed|error|FAILED" $OUT/tests.log | tail -12
cp $OUT/env.log $OUT/summary.txt $OUT/stages.txt $OUT/tests.log "$RESULTS/"
for k in new1 old1 new2; do cp $OUT/$k/kernel.json "$RESULTS/$k.json"; done
