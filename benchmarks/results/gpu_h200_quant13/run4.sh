# Run 4: where the compiled int8 step loses to bf16 LeanK at 32K batch 1 (run 3: 11.85 against 9.22 ms per step):
# torch.profiler kernel tables of both compiled static caches, 8 layers (shorter compilation; per-layer costs).
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
