# Run 4: the auto-compiled generate tests on CUDA, now teacher-forced against the eager PyTorch path
# (tests/teacher_forcing.py): the 8-bit static cache (int8, FP8) and the model-dtype static cache (bf16, fp16).
set -uo pipefail
RESULTS=$OUT
OUT=/tmp/w
source benchmarks/stage.sh
stage_env
stage t_gpu 400 $PYTHON -m pytest -q -p no:cacheprovider -p no:logging --tb=short --durations=8 -m gpu tests/test_quantized_static.py tests/test_static_cache.py
cat $OUT/stages.txt
cp $OUT/env.log $OUT/stages.txt $OUT/t_gpu.log "$RESULTS/"
