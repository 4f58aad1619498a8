"""Time of the PyTorch decode path over an 8-bit middle (CPU, 1 thread), one Llama-mask layer, batch 1.

    PYTHONPATH=src python benchmarks/results/gpu_h200_quant8/scripts/cpu_torch_path_8bit.py

Median and minimum of 15 calls of `leank_decode_torch` after 3 warm-up calls, int8 and fp32 middles of 4K and 16K
tokens written through a real `MiddleRegion` (run with another tree on PYTHONPATH to compare layouts).
"""

import time

import torch

from leank_hf.masks import LeanKMasks
from leank_hf.middle_region import MiddleRegion
from leank_hf.ops.decode_attention.layout import CompactKV, HeadLayout
from leank_hf.ops.decode_attention.naive import leank_decode_torch
from leank_hf.ops.decode_attention.quantization import FORMATS
from leank_hf.tools.benchmarks import MASK_ID


def main() -> None:
    torch.set_num_threads(1)
    layout = HeadLayout.from_mask(LeanKMasks.from_pretrained(MASK_ID).mask[5])
    for quant in ("int8", None):
        for num_mid in (4096, 16384):
            region = MiddleRegion(
                layout, layout, batch=1, capacity=num_mid, dtype=torch.float32, quant=quant and FORMATS[quant]
            )
            region.write_range(torch.randn(1, 8, num_mid, 128), torch.randn(1, 8, num_mid, 128), 0)
            full = torch.randn(1, 8, 1024, 128)
            kv = CompactKV(
                layout=layout, full_keys=full, full_values=full, sink_size=128, num_recent=896,
                recent_start=128 + num_mid, mid_keys=region.keys, mid_values=region.values, mid_cap=num_mid,
                num_mid=num_mid, pad=torch.zeros(1, dtype=torch.int64), query_start=1024 + num_mid - 1,
                boundaries=(128 + num_mid,), mid_key_scales=region.key_scales, mid_value_scales=region.value_scales,
            )  # fmt: skip
            query = torch.randn(1, 32, 1, 128)
            for _ in range(3):
                leank_decode_torch(query, kv, scale=0.1)
            times = []
            for _ in range(15):
                start = time.perf_counter()
                leank_decode_torch(query, kv, scale=0.1)
                times.append(time.perf_counter() - start)
            times.sort()
            print(f"{quant or 'fp32'} middle {num_mid}: median {1e3 * times[7]:.2f} ms, min {1e3 * times[0]:.2f} ms")


if __name__ == "__main__":
    main()
