"""Issue 17: is the served path limited by the work in flight? One repository, one server
launch per setting: the bench's served run at (chunks per request, requests in flight) =
(256, 32) as `make bench` ran until 2026-12-02, (256, 64), (512, 32), then (256, 32) again
for the spread.
Run on a CUDA GPU: python docs/experiments/in_flight.py [out.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from virnucpro_triton.bench import build_repository, make_workload, served

SETTINGS = [(256, 32), (256, 64), (512, 32), (256, 32)]


def main() -> None:
    work = Path("/tmp/in_flight")
    build_repository(work / "repository", False, torch.device("cuda"))
    fasta = work / "workload.fasta"
    frames = len(make_workload(fasta, 12_000, 300))
    results = []
    for i, (chunks, in_flight) in enumerate(SETTINGS):
        got = served(work / "repository", fasta, frames, 300, work / f"out{i}", chunks, in_flight)
        keep = ("frames_per_s", "gpu_busy_pct", "cpu_cores_busy", "cold_start_s")
        results.append({"chunks": chunks, "in_flight": in_flight, **{k: got[k] for k in keep}})
        print(json.dumps(results[-1]), flush=True)
    if len(sys.argv) > 1:
        Path(sys.argv[1]).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
