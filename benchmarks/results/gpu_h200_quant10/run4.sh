# Run 4: an upper bound on what cheaper int8 conversions could gain. Two timing-only trees (their int8 values are
# wrong; bench kernel times random codes): "noxor" drops the xor of int8_to_half (codes read as offset binary),
# "prmt" drops the xor and both fp16 subtractions (byte permutes only: FP8's instruction count). Interleaved with main.
set -uo pipefail
RESULTS=$OUT
OUT=/tmp/w
source benchmarks/stage.sh
stage_env
B="-m leank_hf.cli.main bench kernel --contexts 32k --batches 8 --rep-ms 25"
PRMT="env PYTHONPATH=$PWD/.ws/v_prmt/src"
NOXOR="env PYTHONPATH=$PWD/.ws/v_noxor/src"
stage main1 100 $PYTHON $B --middle-quant int8 fp8 --output-dir $OUT/main1
stage prmt1 80 $PRMT $PYTHON $B --middle-quant int8 --output-dir $OUT/prmt1
stage noxor1 80 $NOXOR $PYTHON $B --middle-quant int8 --output-dir $OUT/noxor1
stage main2 60 $PYTHON $B --middle-quant int8 fp8 --output-dir $OUT/main2
stage prmt2 60 $PRMT $PYTHON $B --middle-quant int8 --output-dir $OUT/prmt2
stage noxor2 60 $NOXOR $PYTHON $B --middle-quant int8 --output-dir $OUT/noxor2
cat $OUT/stages.txt
for k in main1 prmt1 noxor1 main2 prmt2 noxor2; do echo "## $k"; grep -E "^\| 32768|copy bandwidth" $OUT/$k/kernel.md | cut -c1-260; done > $OUT/summary.txt
cat $OUT/summary.txt
cp $OUT/env.log $OUT/summary.txt $OUT/stages.txt "$RESULTS/"
for k in main1 prmt1 noxor1 main2 prmt2; do cp $OUT/$k/kernel.json "$RESULTS/$k.json"; done
