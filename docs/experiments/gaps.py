"""Issue 17: where the served path loses against ESM-2 alone (886-890 served vs 1,068 alone).

(1) In-process, ESM-2 3B (random weights, bf16): the shipped ProteinEmbedder (packed, each block
    compiled, warmed up as the entry does) and its padded way, on successive sets of 1,000
    fresh frames, as the esm2 entry's executes see them: frames/s of each set and the graphs
    dynamo compiled meanwhile (a recompilation costs seconds of GPU idle in a served run).
(2) Served, one server launch each: chunks per request x requests in flight x esm2 instances
    per GPU, with the stubs' recompilations counted in the server's log (TORCH_LOGS=recompiles).
Run on a CUDA GPU: python docs/experiments/gaps.py [out.json]
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from virnucpro_triton import repository as repo
from virnucpro_triton.backends.torch_backend import TorchBackend
from virnucpro_triton.bench import build_repository, make_workload, served
from virnucpro_triton.models.esm2 import ESM2_SIZES, Esm2, Esm2Config
from virnucpro_triton.sequence_embedders import ProteinEmbedder

DEVICE = torch.device("cuda")
SERVED = [(256, 32, 1), (512, 32, 1), (1024, 32, 1), (512, 32, 2), (256, 32, 1)]


def graphs() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def per_execute(embed: ProteinEmbedder, sets: list[list[str]]) -> list[dict]:
    out = []
    for proteins in sets:
        before = graphs()
        torch.cuda.synchronize()
        start = time.perf_counter()
        embed(proteins)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        out.append(
            {"frames_per_s": round(len(proteins) / seconds), "new_graphs": graphs() - before}
        )
    return out


def in_process() -> dict:
    frames = make_workload(Path("/tmp/gaps_frames.fa"), 12_000, 300, seed=5)
    proteins = [f.protein for f in frames]
    sets = [proteins[i : i + 1000] for i in range(0, 8000, 1000)]
    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = Esm2(Esm2Config(*ESM2_SIZES["esm2_t36_3B_UR50D"])).eval().to(torch.bfloat16)
    results = {}
    for name, packed in (("packed", True), ("padded", False)):
        torch._dynamo.reset()
        embed = ProteinEmbedder(TorchBackend(model, DEVICE, compiled=True))
        embed.backend.packed = packed
        start = time.perf_counter()
        embed.warm_up()
        warm = time.perf_counter() - start
        executes = per_execute(embed, sets)
        steady = per_execute(embed, sets)  # the same sets again: nothing new to compile
        results[name] = {
            "warm_up_s": round(warm, 1),
            "graphs_after_warm_up": graphs(),
            "first_pass": executes,
            "second_pass": steady,
            "second_pass_median": statistics.median(s["frames_per_s"] for s in steady),
        }
        print(name, json.dumps(results[name]), flush=True)
    return results


def set_instances(repository: Path, name: str, count: int) -> None:
    path = repository / name / "config.pbtxt"
    config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    del config.instance_group[:]
    config.instance_group.add(count=count)
    path.write_text(text_format.MessageToString(config))


def recompilations() -> dict:
    """Counts in the newest server log (the run just stopped)."""
    log = max(Path("/tmp").glob("tritonserver-*.log"), key=os.path.getmtime).read_text(
        errors="replace"
    )
    return {
        "recompiling": log.count("Recompiling"),
        "limit_hit": log.count("recompile_limit") + log.count("cache_size_limit"),
    }


def serving() -> list[dict]:
    os.environ["TORCH_LOGS"] = "recompiles"  # the stubs inherit the server's environment
    work = Path("/tmp/gaps")
    build_repository(work / "repository", False, DEVICE)
    fasta = work / "workload.fasta"
    frames = len(make_workload(fasta, 12_000, 300))
    results = []
    for i, (chunks, in_flight, instances) in enumerate(SERVED):
        set_instances(work / "repository", repo.ESM2, instances)
        got = served(work / "repository", fasta, frames, 300, work / f"out{i}", chunks, in_flight)
        keep = ("frames_per_s", "gpu_busy_pct", "gpu_memory_peak_gib", "cold_start_s")
        results.append(
            {
                "chunks": chunks,
                "in_flight": in_flight,
                "esm2_instances": instances,
                **{k: got[k] for k in keep},
                "cpu_cores_busy": got["cpu_cores_busy"],
                "esm2": got["model_seconds"]["esm2"],
                **recompilations(),
            }
        )
        print(json.dumps(results[-1]), flush=True)
    return results


def main() -> None:
    results = {"device": torch.cuda.get_device_name(DEVICE)}
    if "served-only" not in sys.argv:
        results["in_process"] = in_process()
    results["served"] = serving()
    out = [a for a in sys.argv[1:] if a.endswith(".json")]
    if out:
        Path(out[0]).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
