"""Which KV heads a tensor-parallel rank holds, read from the model's own sharded key projections.

transformers' tensor parallelism (`from_pretrained(..., tp_plan="auto")` under `torchrun`) stores each attention's
`k_proj.weight` as a `DTensor` sharded on its output rows (placement `Shard(0)` on the "tp" mesh dimension), so each
rank's attention computes, and caches, a contiguous run of KV heads. `kv_head_shard` reads that run from the weights'
placements and local shapes; layouts that do not give every rank whole, distinct KV heads are refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from .contract import FULL_ATTENTION, ModelShape
from .errors import LeanKUsageError

# The plan style whose output is this rank's slice of the key rows (transformers' "colwise": Shard(0) weight,
# local output); other styles that split the weight gather the output, so attention sees every head.
_LOCAL_HEADS_STYLE = "colwise"


@dataclass(frozen=True)
class KVHeadShard:
    """The KV heads `[start, stop)` that this rank's attention sees in every full-attention layer.

    Args:
        start (`int`): first KV head held by this rank.
        stop (`int`): one past the last KV head held by this rank.
        num_heads (`int`): KV heads of the whole model, per layer.
        rank (`int`): this rank's coordinate on the tensor-parallel mesh dimension.
        world_size (`int`): ranks on that dimension.
        group (`ProcessGroup`): the process group of that dimension (to sum cache bytes over ranks).
        device (`torch.device`): where this group's collectives take their tensors.
    """

    start: int
    stop: int
    num_heads: int
    rank: int
    world_size: int
    group: Any
    device: torch.device

    def sum_over_ranks(self, values: list[int]) -> list[int]:
        """Element-wise sum of `values` over the ranks of the group (a collective: every rank must call it)."""
        tensor = torch.tensor(values, dtype=torch.int64, device=self.device)
        torch.distributed.all_reduce(tensor, group=self.group)
        return tensor.tolist()


def _is_dtensor(tensor: torch.Tensor) -> bool:
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


class _KeyProjection(NamedTuple):
    name: str  # module name, e.g. "model.layers.3.self_attn.k_proj"
    weight: torch.Tensor
    style: str | None  # its tensor-parallel plan style, if the plan has an entry for it
    plan: str  # the plan entry, for messages


def _key_projections(model: torch.nn.Module) -> dict[int, _KeyProjection]:
    """`{layer_idx: _KeyProjection}` of the decoder's attention modules."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    inside = {id(module) for module in decoder.modules()}
    plan = getattr(model, "tp_plan", None) or {}
    found = {}
    for name, module in model.named_modules():
        projection = getattr(module, "k_proj", None)
        layer = getattr(module, "layer_idx", None)
        if id(module) in inside and isinstance(layer, int) and isinstance(projection, torch.nn.Module):
            pattern = re.sub(r"\.\d+(\.|$)", r".*\1", f"{name}.k_proj")
            style = plan.get(pattern)
            entry = f"tp_plan entry {pattern!r}: {style!r}" if style else f"no tp_plan entry for {pattern!r}"
            found[layer] = _KeyProjection(f"{name}.k_proj", projection.weight, style, entry)
    return found


def kv_head_shard(model: torch.nn.Module) -> KVHeadShard | None:
    """The KV heads this rank holds when `model` is tensor parallel, `None` when every layer holds all its KV heads.

    Args:
        model (`PreTrainedModel`):
            The model, as loaded (e.g. `from_pretrained(..., tp_plan="auto")` under `torchrun`).

    Returns:
        `KVHeadShard` or `None`.

    Raises:
        `LeanKUsageError`: a tensor-parallel layout LeanK cannot follow: KV heads replicated on every rank, split
            unevenly or inside a head, sharded differently across layers, or no `k_proj` to read the split from.
    """
    shape = ModelShape.from_config(model.config)
    tp_size = getattr(model, "tp_size", None) or 1
    projections = _key_projections(model)
    shards: dict[tuple[int, int] | None, tuple[str, KVHeadShard | None]] = {}
    for layer, layer_type in enumerate(shape.layer_types):
        if layer_type != FULL_ATTENTION:
            continue
        if layer not in projections:
            if tp_size == 1:
                return None
            raise LeanKUsageError(
                f"{shape.name!r} is tensor parallel (tp_size={tp_size}) but layer {layer} has no attention module "
                "with a `k_proj` to read its KV-head split from (fused QKV projections are not supported); use "
                "LeanKCache with this model on one process"
            )
        shard = _layer_shard(projections[layer], shape, tp_size)
        shards.setdefault(None if shard is None else (shard.start, shard.stop), (projections[layer].name, shard))
    if len(shards) > 1:
        described = "; ".join(
            f"{name}: {'all heads' if key is None else f'heads {key[0]}..{key[1] - 1}'}"
            for key, (name, _) in shards.items()
        )
        raise LeanKUsageError(
            f"the layers of {shape.name!r} hold different KV heads on this rank ({described}); LeanKCache needs the "
            "same split in every layer: load the model with tp_plan='auto'"
        )
    return next(iter(shards.values()), (None, None))[1]


def _layer_shard(projection: _KeyProjection, shape: ModelShape, tp_size: int) -> KVHeadShard | None:
    """The KV heads of one layer's `k_proj.weight` `[heads * head_dim, hidden]` held by this rank."""
    weight, heads, head_dim = projection.weight, shape.num_kv_heads, shape.head_dim
    rows = heads * head_dim
    replicated = (
        f"KV heads are replicated: every rank's attention sees all {heads} KV heads ({projection.plan}); LeanKCache "
        "follows plans that split the KV heads across ranks: shard k_proj and v_proj 'colwise' (tp_plan='auto') or "
        "run the model on one process"
    )
    if not _is_dtensor(weight):
        if tp_size == 1:
            return None
        if weight.shape[0] == rows:
            raise LeanKUsageError(f"tensor-parallel model (tp_size={tp_size}): {replicated}")
        raise LeanKUsageError(
            f"k_proj weight is a plain tensor with {weight.shape[0]} of {rows} key rows ({heads} KV heads of "
            f"{head_dim}) in a model with tp_size={tp_size} ({projection.plan}): LeanK cannot tell which KV heads "
            "this rank holds; shard k_proj 'colwise' (tp_plan='auto'), which splits the KV heads across ranks"
        )
    from torch.distributed.tensor import Shard

    mesh, placements = weight.device_mesh, weight.placements
    sharded = [dim for dim, placement in enumerate(placements) if placement.is_shard()]
    if not sharded:
        if mesh.size() == 1:
            return None
        raise LeanKUsageError(f"k_proj weight replicated on {mesh.size()} ranks: {replicated}")
    placement = placements[sharded[0]]
    if len(sharded) > 1 or type(placement) is not Shard or placement.dim not in (0, -weight.ndim):
        raise LeanKUsageError(
            f"k_proj weight is sharded as {tuple(placements)} on mesh {mesh} ({projection.plan}); LeanKCache follows "
            "one Shard(0) split of the KV heads (tp_plan='auto')"
        )
    if projection.style not in (None, _LOCAL_HEADS_STYLE):
        # e.g. "colwise_rep": the weight is split but its output is gathered, so attention sees every head.
        raise LeanKUsageError(f"k_proj output is gathered on every rank: {replicated}")
    dim = sharded[0]
    size, rank = mesh.size(dim), mesh.get_local_rank(dim)
    local_rows = weight.to_local().shape[0]
    if weight.shape[0] != rows or heads % size or local_rows != rows // size:
        raise LeanKUsageError(
            f"{heads} KV heads ({rows} key rows) split over {size} ranks ({projection.plan}) give this rank "
            f"{local_rows} rows, not an even share of whole KV heads of {head_dim}: LeanK needs "
            f"num_key_value_heads divisible by the tensor-parallel size; use a tp_size that divides {heads}"
        )
    per_rank = heads // size
    device = weight.to_local().device if mesh.device_type != "cpu" else torch.device("cpu")
    return KVHeadShard(rank * per_rank, (rank + 1) * per_rank, heads, rank, size, mesh.get_group(dim), device)
