#!/usr/bin/env bash
# Tensor-parallel GPU run (issue 15): LeanK under tp_plan="auto" on 2 GPUs (NCCL) against one GPU, then decode speed
# and per-GPU memory of DynamicCache + sdpa and LeanKCache + Triton under TP 2, all under $OUT.
#
#   OUT=/path/to/results bash benchmarks/tp_gpu_run.sh      # from the repository root, on a machine with 2 CUDA GPUs
#
# Needs torch, triton, transformers, safetensors and huggingface_hub already installed; uses the source tree through
# PYTHONPATH (no install, no network: the Llama mask is the bundled copy). The random model (Llama-3.1-8B's attention
# shape, $LAYERS layers, bf16) is saved under $WORK. Every stage has a time limit; the whole script stays under
# 9 minutes (limits 20 + 150 + 150 + 210 s). Stages and their code: leank_hf/tools/benchmarks/generate_tp.py.
set -uo pipefail

OUT=${OUT:-benchmarks/results/gpu_tp}
if [ -z "${WORK:-}" ]; then  # the saved model (4 GB at 8 layers) goes away with the run unless WORK is given
    WORK=$(mktemp -d)
    trap 'rm -rf "$WORK"' EXIT
fi
LAYERS=${LAYERS:-8}
mkdir -p "$WORK"
# NVLink SHARP / multicast stays off for NCCL, torch's symmetric memory and NVSHMEM.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}

# shellcheck source=benchmarks/stage.sh
source "$(dirname "${BASH_SOURCE[0]}")/stage.sh"
TORCHRUN=("$PYTHON" -m torch.distributed.run --standalone --nproc_per_node 2)

stage_env

# One GPU: save the random model, and greedy / left-padded-batch outputs of DynamicCache + sdpa and LeanK + Triton.
stage reference 150 env CUDA_VISIBLE_DEVICES=0 "$PYTHON" -m leank_hf.tools.benchmarks.generate_tp reference "$WORK" \
    --layers "$LAYERS"

# TP 2: the same cases with tp_plan="auto" and LeanKCache.for_model, compared with the one-GPU outputs (tp_check).
stage check 150 "${TORCHRUN[@]}" -m leank_hf.tools.benchmarks.generate_tp check "$WORK" "$OUT"

# TP 2: decode tok/s and per-GPU peak memory at 32K and 128K tokens, batch 1 and 8, both methods (tp_decode).
stage bench 210 "${TORCHRUN[@]}" -m leank_hf.tools.benchmarks.generate_tp bench "$WORK" "$OUT" \
    --contexts 32k,128k --batches 1,8 --steps 16

echo
echo "=== stages"
cat "$OUT/stages.txt"
for table in tp_check tp_decode; do
    if [ -f "$OUT/$table.md" ]; then
        echo
        cat "$OUT/$table.md"
    fi
done
