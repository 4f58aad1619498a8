"""Where Triton's launch of the decode kernel spends host time (device-only experiment)."""

import cProfile
import functools
import pstats
import sys

import torch

sys.path.insert(0, "benchmarks")
from launch_host_cost import _RecordLaunch
from triton.runtime import driver

from leank_hf.masks import LeanKMasks
from leank_hf.ops.decode_attention import triton as td
from leank_hf.tools.benchmarks import MASK_ID
from leank_hf.tools.benchmarks.kernel import _as_cache_steps, _layer_caches, host_us_per_call

quant = sys.argv[1] if len(sys.argv) > 1 else None
masks = LeanKMasks.from_pretrained(MASK_ID)
query = torch.randn(1, 32, 1, 128, device="cuda", dtype=torch.bfloat16)
(kv,) = _as_cache_steps(query, _layer_caches(masks, [0], 32768, 1, torch.bfloat16, quant))
call = functools.partial(td.leank_decode_triton, query, kv, scale=0.1)
kernel, rec = td._leank_decode_kernel, _RecordLaunch()
td._leank_decode_kernel = rec
call()
td._leank_decode_kernel = kernel
grid, args, kwargs = rec.launch
compiled = kernel[grid](*args, **kwargs)
dev = driver.active.get_current_device()
caches = kernel.device_caches[dev]
binder = caches[4]
bound, spec, opts = binder(*args, **kwargs)
allargs = list(bound.values())
stream = driver.active.get_current_stream(dev)
run = compiled.run
fn, meta = compiled.function, compiled.packed_metadata
tensors = [a for a in args if isinstance(a, torch.Tensor)]
N = 3000
rows = {
    "whole leank_decode_triton": call,
    "kernel[grid](...)": lambda: kernel[grid](*args, **kwargs),
    "binder only": lambda: binder(*args, **kwargs),
    "get device + stream": lambda: driver.active.get_current_stream(driver.active.get_current_device()),
    "torch current_stream": lambda: torch.cuda.current_stream().cuda_stream,
    "compiled[grid](*all, stream)": lambda: compiled[grid](*allargs, stream=stream),
    "compiled.run direct": lambda: run(grid[0], grid[1], grid[2], stream, fn, meta, None, None, None, *allargs),
    f"data_ptr x{len(tensors)}": lambda: [t.data_ptr() for t in tensors],
    f"align key x{len(tensors)}": lambda: tuple((t.dtype, t.data_ptr() & 15) for t in tensors),
}
print(f"{quant} middle: {len(args)} positional args ({len(tensors)} tensors), {len(kwargs)} keyword, {len(allargs)}")
for name, f in rows.items():
    print(f"  {name}: {host_us_per_call(f, N):.1f} us")
pr = cProfile.Profile()
pr.enable()
for _ in range(2000):
    kernel[grid](*args, **kwargs)
pr.disable()
torch.cuda.synchronize()
pstats.Stats(pr).sort_stats("tottime").print_stats(14)
