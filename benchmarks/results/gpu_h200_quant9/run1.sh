set -uo pipefail
OUT=${OUT:-/tmp/out}
source benchmarks/stage.sh
stage_env
B="-m leank_hf.cli.main bench kernel --contexts 32k --batches 8 --middle-quant int8 fp8 --rep-ms 25"
OLD="env PYTHONPATH=$PWD/.ws/old/src"
stage k_new1 110 $PYTHON $B --output-dir $OUT/k_new1
stage k_old1 110 $OLD $PYTHON $B --output-dir $OUT/k_old1
stage k_new2 90 $PYTHON $B --output-dir $OUT/k_new2
stage k_old2 90 $OLD $PYTHON $B --output-dir $OUT/k_old2
T="benchmarks/tune_kernel.py --no-report --points 32768:8 --block-n 128 --warps 4 --stages 3,4 --max-registers 168 --chunking 1.15:1024:3,1.0:1024:3,1.5:1024:3,1.15:2048:3"
stage tune_int8 75 $PYTHON $T --middle-quant int8
stage tune_fp8 60 $PYTHON $T --middle-quant fp8
cat $OUT/stages.txt
for k in k_new1 k_old1 k_new2 k_old2; do echo "## $k"; grep -E "^\| 32768|Host cost|copy bandwidth" $OUT/$k/kernel.md | cut -c1-220; done
grep -h "T= *32768" $OUT/tune_int8.log $OUT/tune_fp8.log
