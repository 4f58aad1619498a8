# Run 2: does the 8-bit kernel's speed depend on the code bytes? (scripts/data_probe.py on main), then bench kernel.
set -uo pipefail
RESULTS=$OUT
OUT=/tmp/w
source benchmarks/stage.sh
stage_env
stage probe 360 $PYTHON benchmarks/results/gpu_h200_quant11/scripts/data_probe.py
stage main1 90 $PYTHON -m leank_hf.cli.main bench kernel --contexts 32k --batches 8 --rep-ms 25 --middle-quant int8 fp8 --output-dir $OUT/main1
cat $OUT/stages.txt
grep -E "^\| 32768|copy bandwidth" $OUT/main1/kernel.md | cut -c1-260
cp $OUT/env.log $OUT/stages.txt $OUT/probe.log "$RESULTS/"
cp $OUT/main1/kernel.json "$RESULTS/main1.json"
