"""Issue 17: why the esm2 stub's CPU went from ~1 to ~2 cores busy with packed batches.

ESM-2 3B (random weights, bf16), the shipped ProteinEmbedder compiled and warmed up as the
entry does, packed and padded, on the same 1,000-frame sets (one esm2 execute each): wall and
process CPU seconds per set, the host-device synchronizations torch reports in one set
(`torch.cuda.set_sync_debug_mode`), and the CPU-side ops that took the most time (profiler).
Run on a CUDA GPU: python docs/experiments/stub_cpu.py [out.json]
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from virnucpro_triton.backends.torch_backend import TorchBackend
from virnucpro_triton.bench import make_workload
from virnucpro_triton.models.esm2 import ESM2_SIZES, Esm2, Esm2Config
from virnucpro_triton.sequence_embedders import ProteinEmbedder

DEVICE = torch.device("cuda")


def main() -> None:
    proteins = [f.protein for f in make_workload(Path("/tmp/cpu_frames.fa"), 6_000, 300, seed=9)]
    sets = [proteins[i : i + 1000] for i in range(0, 5000, 1000)]
    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = Esm2(Esm2Config(*ESM2_SIZES["esm2_t36_3B_UR50D"])).eval().to(torch.bfloat16)
    embed = ProteinEmbedder(TorchBackend(model, DEVICE, compiled=True))
    embed.warm_up()
    results: dict = {"device": torch.cuda.get_device_name(DEVICE)}
    for packed in (True, False, True):
        embed.backend.packed = packed
        name = "packed" if packed else "padded"
        embed(sets[0])  # this layout's shapes and memory pools
        wall = cpu = 0.0
        for proteins_set in sets:
            torch.cuda.synchronize()
            start, start_cpu = time.perf_counter(), time.process_time()
            embed(proteins_set)
            wall += time.perf_counter() - start
            cpu += time.process_time() - start_cpu
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            embed(sets[1])
            torch.cuda.set_sync_debug_mode("default")
        syncs = [str(w.message).splitlines()[0] for w in caught]
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            embed(sets[2])
        top = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
        results.setdefault(name, []).append(
            {
                "frames_per_s": round(len(sets) * 1000 / wall),
                "cpu_cores_busy": round(cpu / wall, 2),
                "synchronizations": len(syncs),
                "first_synchronizations": syncs[:5],
            }
        )
        print(name, json.dumps(results[name][-1]), "\n" + top, flush=True)
    if len(sys.argv) > 1:
        Path(sys.argv[1]).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
