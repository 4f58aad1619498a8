"""SM clock, power and clock-event reasons while the 8-bit kernel reads different code bytes (device probe).

Replays a CUDA graph of the kernel over the 32 Llama-mask layers at 32K batch 8 for a few seconds per byte pattern
(`data_probe.pattern`) while `nvidia-smi` samples every 100 ms; prints the medians per pattern.
"""

import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from leank_hf import LeanKMasks
from leank_hf.ops.decode_attention.triton import leank_decode_triton
from leank_hf.tools.benchmarks import MASK_ID
from leank_hf.tools.benchmarks.kernel import _as_cache_steps, _layer_caches

sys.path.insert(0, str(Path(__file__).parent))
from data_probe import refill  # noqa: E402

FIELDS = "clocks.sm,clocks.mem,power.draw,clocks_event_reasons.active"


def main() -> None:
    masks = LeanKMasks.from_pretrained(MASK_ID)
    query = torch.randn(8, 32, 1, 128, device="cuda", dtype=torch.bfloat16)
    phase = ["setup"]
    samples: list[tuple[str, str]] = []
    smi = subprocess.Popen(
        ["nvidia-smi", f"--query-gpu={FIELDS}", "--format=csv,noheader,nounits", "-lms", "100"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    reader = threading.Thread(target=lambda: [samples.append((phase[0], line.strip())) for line in smi.stdout])
    reader.start()
    for quant, kinds in (("int8", ("zero", "quantized", "bench")), ("fp8", ("zero", "quantized"))):
        caches = _as_cache_steps(query, _layer_caches(masks, list(range(32)), 32768, 8, torch.bfloat16, quant))
        for kind in kinds:
            refill(caches, kind, quant)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                for kv in caches:
                    leank_decode_triton(query, kv, scale=0.088)
            graph.replay()
            torch.cuda.synchronize()
            phase[0] = f"{quant} {kind}"
            start, replays = time.perf_counter(), 0
            while time.perf_counter() - start < 4.0:
                for _ in range(50):
                    graph.replay()
                replays += 50
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - start
            phase[0] = "idle"
            print(
                f"{quant} {kind:9s}: {elapsed / replays / 32 * 1e6:6.1f} us per layer (graph of 32 launches)",
                flush=True,
            )
            time.sleep(0.5)
        del caches
        torch.cuda.empty_cache()
    smi.terminate()
    reader.join()
    print("first samples:", [line for _, line in samples[:2]])
    for name in dict.fromkeys(p for p, _ in samples):
        rows = [line.split(", ") for p, line in samples if p == name]
        rows = [r for r in rows if len(r) == 4][2:]  # skip the first 200 ms of a phase
        if not rows:
            continue
        sm, mem, power = (statistics.median(float(r[i]) for r in rows) for i in range(3))
        reasons = sorted({r[3] for r in rows})
        print(f"{name:16s} n={len(rows):3d} sm {sm:.0f} MHz, mem {mem:.0f} MHz, power {power:.0f} W, reasons {reasons}")


if __name__ == "__main__":
    main()
