# Run 2: the weights-by-scale kernel (working tree: main plus ../gpu_h200_quant11/scripts/weights_by_scale.diff) on
# CUDA: the 8-bit kernel tests of both kernels (dynamic and static custom op) and the auto-compiled 8-bit generate
# tests; then a register-cap / stages sweep of its default 8-bit launch over all 32 layers, int8 and FP8.
set -uo pipefail
RESULTS=$OUT
OUT=/tmp/w
source benchmarks/stage.sh
stage_env
T="$PYTHON -m pytest -q -p no:cacheprovider --tb=short"
stage t_kernel 170 $T -m "not slow" -k "8bit or zero_values" tests/test_triton_decode.py
stage t_static 200 $T -m "not slow" tests/test_quantized_static.py
LAYERS=$(seq -s, 0 31)
SWEEP="benchmarks/tune_kernel.py --no-report --points 32768:8 --layers $LAYERS --block-n 128 --warps 4 --chunking 1.15:1024:3"
stage tune_int8 100 $PYTHON $SWEEP --middle-quant int8 --stages 3 --max-registers 168,0,200
stage tune_fp8 60 $PYTHON $SWEEP --middle-quant fp8 --stages 3 --max-registers 168,0
stage tune_int8b 60 $PYTHON $SWEEP --middle-quant int8 --stages 3 --max-registers 0,168
cat $OUT/stages.txt
grep -hE "passed|failed|error|FAILED" $OUT/t_kernel.log $OUT/t_static.log | tail -8
cp $OUT/env.log $OUT/stages.txt $OUT/t_kernel.log $OUT/t_static.log "$RESULTS/"
cat $OUT/tune_int8.log $OUT/tune_fp8.log $OUT/tune_int8b.log > "$RESULTS/tune.log"
