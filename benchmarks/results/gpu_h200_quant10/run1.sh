# Run 1 (tenth #14 session): which machine, the 8-bit kernel at 32K batch 8 twice, the CUDA tests added after the
# ninth session's test runs, and an Nsight Compute stall profile of the int8 and FP8 launches (layer 10).
set -uo pipefail
RESULTS=$OUT
OUT=/tmp/w
source benchmarks/stage.sh
stage_env
B="-m leank_hf.cli.main bench kernel --contexts 32k --batches 8 --middle-quant int8 fp8 --rep-ms 25"
stage k1 110 $PYTHON $B --output-dir $OUT/k1
stage k2 90 $PYTHON $B --output-dir $OUT/k2
stage tests 200 $PYTHON -m pytest -q -p no:cacheprovider --tb=short -m "not slow" tests/test_triton_decode.py tests/test_quantized_static.py -k "widest or across or tile_length"
for middle in int8 fp8; do
    stage "ncu_$middle" 100 ncu --clock-control none --kernel-name regex:_leank_decode_kernel --launch-skip 2 \
        --launch-count 1 --set full --import-source no -f -o "$OUT/$middle" \
        $PYTHON benchmarks/ncu_launch.py "$middle" --layer 10
    ncu --import "$OUT/$middle.ncu-rep" --page details >"$OUT/${middle}_details.txt" 2>&1
    ncu --import "$OUT/$middle.ncu-rep" --page source --csv --print-source sass >"$OUT/${middle}_sass.csv" 2>&1
    $PYTHON benchmarks/ncu_stalls.py "$OUT/${middle}_sass.csv" >"$OUT/${middle}_stalls.txt" 2>&1
done
cat $OUT/stages.txt
for k in k1 k2; do echo "## $k"; grep -E "^\| 32768|Host cost|copy bandwidth" $OUT/$k/kernel.md | cut -c1-300; done
grep -hE "passed|failed|error|FAILED" $OUT/tests.log | tail -8
for m in int8 fp8; do echo "## $m"; grep -E "Duration|Memory Throughput|DRAM Throughput|Registers Per|Achieved Occupancy|Issue Slots Busy|No Eligible" $OUT/${m}_details.txt | head -12; head -30 $OUT/${m}_stalls.txt; done
cp $OUT/env.log $OUT/k1/kernel.md $OUT/tests.log $OUT/int8_details.txt $OUT/fp8_details.txt $OUT/int8_stalls.txt $OUT/fp8_stalls.txt "$RESULTS/" 2>/dev/null
cp $OUT/k2/kernel.md "$RESULTS/kernel_k2.md" 2>/dev/null
