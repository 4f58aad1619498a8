# Run 3: torch.profiler kernel tables of both compiled static caches after the in-place write fix (quant13 run 4
# found a copy of the value tiles per layer and step in the int8 build), 8 layers.
set -uo pipefail
RESULTS=$OUT
OUT=/tmp/w
source benchmarks/stage.sh
stage_env
for m in leank_static_compiled_int8 leank_static_compiled; do
    stage $m 170 $PYTHON benchmarks/profile_decode.py --method $m --context 32768 --batch 1 --steps 6 --layers 8 --out $OUT/prof
done
cat $OUT/stages.txt
for f in $OUT/prof/*.txt; do echo "## $f"; head -40 "$f" | cut -c1-200; done
cp $OUT/env.log $OUT/stages.txt "$RESULTS/"
cp $OUT/prof/*.txt "$RESULTS/" 2>/dev/null || true
