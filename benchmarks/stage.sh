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
#   stage_env: the "env" stage every run starts with: GPUs, versions, and a digest of src/*.py (a device machine's copy of
#   .git may lag the working tree, so `git rev-parse` there can name an older commit).
stage_env() {
    stage env 20 bash -c "nvidia-smi --query-gpu=name,memory.total,compute_cap,clocks.max.sm,driver_version --format=csv
nvidia-smi topo -m 2>/dev/null | head -5 || true
$PYTHON -c 'import sys, torch, triton, transformers; print(sys.version.split()[0], \"torch\", torch.__version__, \"triton\", triton.__version__, \"transformers\", transformers.__version__, torch.cuda.device_count(), \"GPUs\")'
echo \"src sha256 (find src -name '*.py' | sort | xargs cat | sha256sum): \$(find src -name '*.py' | sort | xargs cat | sha256sum)\""
}
