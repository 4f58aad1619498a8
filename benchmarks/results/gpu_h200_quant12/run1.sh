# Run 1: bench kernel, main (working tree) against the weights-by-scale variant (.ws/new: main plus
# ../gpu_h200_quant11/scripts/weights_by_scale.diff), three interleaved rounds, int8 and FP8; then a launch-settings
# sweep of the variant's int8 kernel with realistic codes.
set -uo pipefail
RESULTS=$OUT
OUT=/tmp/w
source benchmarks/stage.sh
stage_env
B="-m leank_hf.cli.main bench kernel --contexts 32k --batches 8 --rep-ms 25 --middle-quant int8 fp8"
NEW="env PYTHONPATH=$PWD/.ws/new/src"
for round in 1 2 3; do
  stage main$round 80 $PYTHON $B --output-dir $OUT/main$round
  stage new$round 80 $NEW $PYTHON $B --output-dir $OUT/new$round
done
stage tune 150 $NEW $PYTHON benchmarks/tune_kernel.py --no-report --middle-quant int8 --points 32768:8 \
  --block-n 128 --warps 4,8 --stages 3,4 --max-registers 168,0 --chunking 1.15:1024:3
cat $OUT/stages.txt
for k in main1 new1 main2 new2 main3 new3; do echo "## $k"; grep -E "^\| 32768|copy bandwidth" $OUT/$k/kernel.md | cut -c1-260; done > $OUT/summary.txt
cat $OUT/summary.txt
cp $OUT/env.log $OUT/summary.txt $OUT/stages.txt $OUT/tune.log "$RESULTS/"
tar -czf "$RESULTS/kernel_json.tar.gz" -C $OUT main1/kernel.json new1/kernel.json main2/kernel.json new2/kernel.json main3/kernel.json new3/kernel.json
