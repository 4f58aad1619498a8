# Sourced by the GPU run scripts from the repository root, after they set $OUT: creates $OUT (clearing
# $OUT/stages.txt), puts the source tree on PYTHONPATH (no install), unbuffers Python, and sets $PYTHON if unset.
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
PYTHON=${PYTHON:-python3}
#   stage NAME LIMIT_SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, record rc and duration.
: >"$OUT/stages.txt"
stage() {
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit}s): $*"
    local t0=$SECONDS
    timeout --signal=INT --kill-after=5 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "$name: rc=$rc, $((SECONDS - t0)) s" | tee -a "$OUT/stages.txt"
}
