# Run 5: bench kernel with the quantized random codes, main (working tree) and branch biased-mma-init (.ws/new).
set -uo pipefail
RESULTS=$OUT
OUT=/tmp/w
source benchmarks/stage.sh
stage_env
B="-m leank_hf.cli.main bench kernel --contexts 32k --batches 8 --rep-ms 25"
stage main1 80 $PYTHON $B --middle-quant int8 fp8 --output-dir $OUT/main1
stage new1 60 env PYTHONPATH=$PWD/.ws/new/src $PYTHON $B --middle-quant int8 --output-dir $OUT/new1
for k in main1 new1; do echo "## $k"; grep -E "^\| 32768|copy bandwidth" $OUT/$k/kernel.md | cut -c1-260; done > $OUT/summary.txt
cat $OUT/stages.txt $OUT/summary.txt
cp $OUT/env.log $OUT/summary.txt $OUT/stages.txt "$RESULTS/"
for k in main1 new1; do cp $OUT/$k/kernel.json "$RESULTS/$k.json"; done
