# Run 2: the CUDA tests of test_triton_decode.py that no run of the final kernel code had reached, every `gpu`-marked
# test, and the attention / offload test files on CUDA.
set -uo pipefail
RESULTS=$OUT
OUT=/tmp/w
source benchmarks/stage.sh
stage_env
P="$PYTHON -m pytest -q -p no:cacheprovider --tb=short"
stage t_rest 240 $P -m "not slow" tests/test_triton_decode.py -k "not (8bit or all_zero or long_context or matches_dense or generate_with or cache_built or widest or across or tile_length)"
stage t_gpu 150 $P -m gpu tests/
stage t_other 120 $P -m "not slow" tests/test_attention.py tests/test_naive_attention.py tests/test_offload.py
cat $OUT/stages.txt
grep -hE "passed|failed|error|FAILED" $OUT/t_rest.log $OUT/t_gpu.log $OUT/t_other.log | tail -20
cp $OUT/env.log $OUT/t_rest.log $OUT/t_gpu.log $OUT/t_other.log "$RESULTS/"
