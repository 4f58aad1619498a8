# Run 3: the long-context 8-bit kernel tests at the new defaults (run 2 was cut off before the two with values below
# fp16's normals); then the 8-bit launch without a register cap (working tree) against the 168-register cap
# (.ws/cap168: the same weights-by-scale code with the cap), one round each of bench kernel.
set -uo pipefail
RESULTS=$OUT
OUT=/tmp/w
source benchmarks/stage.sh
stage_env
stage t_long 110 $PYTHON -m pytest -q -p no:cacheprovider --tb=short -k "gpu_8bit_middle_default_blocks" tests/test_triton_decode.py
B="-m leank_hf.cli.main bench kernel --contexts 32k --batches 8 --rep-ms 25 --middle-quant int8 fp8"
CAP="env PYTHONPATH=$PWD/.ws/cap168/src"
stage uncapped1 80 $PYTHON $B --output-dir $OUT/uncapped1
stage cap1 80 $CAP $PYTHON $B --output-dir $OUT/cap1
cat $OUT/stages.txt
for k in uncapped1 cap1; do echo "## $k"; grep -E "^\| 32768|copy bandwidth" $OUT/$k/kernel.md | cut -c1-260; done > $OUT/summary.txt
cat $OUT/summary.txt
grep -hE "passed|failed|error|FAILED" $OUT/t_long.log | tail -4
cp $OUT/env.log $OUT/stages.txt $OUT/summary.txt $OUT/t_long.log "$RESULTS/"
tar -czf "$RESULTS/kernel_json.tar.gz" -C $OUT uncapped1/kernel.json cap1/kernel.json
