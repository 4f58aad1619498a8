set -uo pipefail
OUT=${OUT:-/tmp/out}
source benchmarks/stage.sh
stage_env
stage prof_none 60 $PYTHON .ws/launch_profile.py
stage prof_int8 60 $PYTHON .ws/launch_profile.py int8
K="-m leank_hf.cli.main bench kernel --contexts 32k --batches 8 --middle-quant int8 fp8 --rep-ms 25"
stage k_main_a 100 $PYTHON $K --output-dir $OUT/k_main_a
stage k_tiled_a 100 env PYTHONPATH=$PWD/.ws/tiled/src LEANK_VALUE_TILED=1 $PYTHON $K --output-dir $OUT/k_tiled_a
stage k_main_b 100 $PYTHON $K --output-dir $OUT/k_main_b
stage k_tiled_b 100 env PYTHONPATH=$PWD/.ws/tiled/src LEANK_VALUE_TILED=1 $PYTHON $K --output-dir $OUT/k_tiled_b
cat $OUT/stages.txt
for d in k_main_a k_tiled_a k_main_b k_tiled_b; do echo "== $d"; grep -E "^\| 32768|Host cost" $OUT/$d/kernel.md | cut -c1-300; done
