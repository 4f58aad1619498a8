# Sourced by the GPU run scripts. Needs $OUT. Clears $OUT/stages.txt.
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
