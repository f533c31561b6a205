"""What each part of the batch-invariant mode costs, with the embedders alone (no server):
`python -m benchmarks.invariance_cost` on a GPU. On the same frames, each model's embedder
  default: compiled, ESM-2 packed (as the entries serve by default);
  not compiled: the same, eager;
  not packed: eager, ESM-2 padded as on a CPU;
  batch-invariant: eager, padded, every batch in its width's fixed shape (the mode).
Each step changes one thing against the one above it; the mode is the last.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import torch

from benchmarks.in_process import models_alone
from benchmarks.random_models import build_repository
from benchmarks.workload import make_workload

VARIANTS = {
    "default": {},
    "not_compiled": {"compiled": False},
    "not_packed": {"compiled": False, "packed": False},
    "batch_invariant": {"compiled": False, "packed": False, "batch_invariant": True},
}


@click.command()
@click.option("--tiny", is_flag=True, help="Demo-size models (CPU smoke run).")
@click.option("--frames", type=int, default=4_000, show_default=True)
@click.option("--chunk-size", type=int, default=300, show_default=True)
@click.option("--work-dir", type=click.Path(path_type=Path), default=Path("build/bench"))
@click.option("--json-out", type=click.Path(path_type=Path), required=True)
def main(tiny: bool, frames: int, chunk_size: int, work_dir: Path, json_out: Path) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    work_dir.mkdir(parents=True, exist_ok=True)
    models = build_repository(work_dir / "repository_cost", tiny, device)
    workload = make_workload(work_dir / f"workload_cost_{chunk_size}.fasta", frames, chunk_size)
    found: dict[str, dict] = {}
    for name, how in VARIANTS.items():  # printed as measured: a cut run keeps what it has
        measured = found[name] = models_alone(models, workload, device, **how)
        measured["over_default"] = measured["frames_per_s"] / found["default"]["frames_per_s"]
        click.echo(
            f"{name:16} {measured['frames_per_s']:8.0f} frames/s  {measured['over_default']:.2f}x"
            f"  DNABERT-S {measured['dnabert_s_frames_per_s']:.0f}/s"
            f"  ESM-2 {measured['esm2_frames_per_s']:.0f}/s"
        )
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    report = {"device": device_name, "frames": len(workload), "chunk_size": chunk_size}
    json_out.write_text(json.dumps({**report, "variants": found}, indent=2) + "\n")


if __name__ == "__main__":
    main()
