"""The served path: FASTA -> client -> embedded tritonserver -> pipeline -> result files, and
its variants (one GPU, copies of reads with the embedding cache off and on, FP8)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path

import click
import numpy as np
import torch
import tritonclient.grpc as grpcclient
from Bio import SeqIO

from benchmarks.in_process import fp8_cosine
from benchmarks.workload import add_duplicates, make_workload
from tests.repository_edits import set_embedding_cache
from virnucpro_triton import repository as repo
from virnucpro_triton.backends.torch_backend import fp8_layers
from virnucpro_triton.commands.embed import embed
from virnucpro_triton.commands.predict import predict
from virnucpro_triton.export.fp8_choice import choose_fp8
from virnucpro_triton.models.fp8 import linear_layers
from virnucpro_triton.results import frame_table
from virnucpro_triton.server import EmbeddedServer
from virnucpro_triton.serving.embedding_cache import read_cache_metrics


@dataclasses.dataclass(frozen=True)
class ServedRun:
    """What one served measurement serves, to whom, and how the client sends it; `gpus`
    (CUDA_VISIBLE_DEVICES of the server) limits the GPUs it sees."""

    repository: Path
    fasta: Path
    frames: int
    chunk_size: int
    out: Path
    batch_chunks: int
    in_flight: int
    gpus: str | None = None


class GpuSampler:
    """nvidia-smi readings every 200 ms while a measurement runs (busy %, memory used)."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> GpuSampler:
        try:
            self._proc = subprocess.Popen(
                [
                    "nvidia-smi",
                    "--query-gpu=utilization.gpu,memory.used",
                    "--format=csv,noheader,nounits",
                    "-lms",
                    "200",
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
        except FileNotFoundError:
            return self
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        for line in self._proc.stdout:
            busy, used = line.split(",")[:2]
            self.samples.append((float(busy), float(used) / 1024))

    def __exit__(self, *_) -> None:
        if self._proc:
            self._proc.terminate()
            self._proc.wait()

    def summary(self) -> dict:
        if not self.samples:
            return {"gpu_busy_pct": None, "gpu_memory_peak_gib": None}
        return {
            "gpu_busy_pct": sum(s[0] for s in self.samples) / len(self.samples),
            "gpu_memory_peak_gib": max(s[1] for s in self.samples),
        }


def client_settings(run: ServedRun) -> dict:
    """`predict`'s settings for `run`'s client."""
    return {"batch_chunks": run.batch_chunks, "max_in_flight": run.in_flight, "progress": False}


def served(
    run: ServedRun,
    probes: Mapping[str, Path] | None = None,
    then: Callable[[str], dict] | None = None,
) -> dict:
    """The served path's measurements. `probes`: entry name -> FASTA that the entry embeds
    once the measurement is over (not timed), under "embeddings" (one row per record). `then`:
    more work against the same server after that (not timed), given the server's URL; what it
    returns goes under "then"."""
    warmup = run.out / "warmup.fasta"  # a smaller workload of its own: first calls, memory pools
    make_workload(warmup, min(run.frames, 2_000), run.chunk_size, seed=1)
    client = client_settings(run)
    start = time.perf_counter()
    server = EmbeddedServer(run.repository, gpus=run.gpus).start()
    try:
        ready = time.perf_counter() - start
        predict(warmup, run.chunk_size, run.out / "warmup", server.grpc_url, **client)
        before = _model_seconds(server.grpc_url)
        cpu_before, cache_before = _cpu_seconds(server.pid), _cache_counts(server)
        client_before = time.process_time()
        with GpuSampler() as gpu:
            start = time.perf_counter()
            summary = predict(run.fasta, run.chunk_size, run.out / "run", server.grpc_url, **client)
            seconds = time.perf_counter() - start
        # The client is this process: its CPU time includes the GPU sampler's thread (tiny).
        cpu = {"client": time.process_time() - client_before}
        cpu |= {k: v - cpu_before.get(k, 0.0) for k, v in _cpu_seconds(server.pid).items()}
        cache = _cache_counts(server)
        after = _model_seconds(server.grpc_url)
        embeddings = {}
        for entry, fasta in (probes or {}).items():
            vectors = run.out / f"probe_{entry}.npy"
            embed(fasta, entry, vectors, server.grpc_url, progress=False)
            embeddings[entry] = np.load(vectors)
        more = then(server.grpc_url) if then else None
    finally:
        server.stop()
    assert summary.frames == run.frames, (summary.frames, run.frames)
    return {
        "frames_per_s": run.frames / seconds,
        "seconds": seconds,
        "cold_start_s": ready,
        **gpu.summary(),
        "cpu_ms_per_frame": {k: round(1000 * v / run.frames, 4) for k, v in cpu.items()},
        "cpu_cores_busy": {k: round(v / seconds, 3) for k, v in cpu.items()},
        "embedding_cache": {
            model: {k: v - cache_before.get(model, {}).get(k, 0.0) for k, v in counts.items()}
            for model, counts in cache.items()
        },
        "model_seconds": {
            model: {k: round(after[model][k] - before[model][k], 3) for k in after[model]}
            for model in after
        },
        **({"embeddings": embeddings} if probes else {}),
        **({"then": more} if then else {}),
    }


def verdicts(out_dir: Path) -> list[bool]:
    """Per frame of a served run, in input order: called virus?"""
    rows = frame_table.read_frames(out_dir / frame_table.FILES["tsv"])
    return [row.p_virus > row.p_others for row in rows]


def agreement(a: list[bool], b: list[bool]) -> float:
    return sum(x == y for x, y in zip(a, b, strict=True)) / len(a)


def _cpu_seconds(server_pid: int) -> dict[str, float]:
    """CPU seconds (user + system) so far of the tritonserver process and of each entry's
    Python stubs (all in the server's process group), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    seconds: dict[str, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # from field 3 (state) on
            arguments = (stat.parent / "cmdline").read_bytes().decode().split("\0")
        except (OSError, IndexError):
            continue  # ended meanwhile
        if int(fields[2]) != server_pid:  # field 5: process group
            continue
        # A stub's arguments name its entry's model.py: REPOSITORY/ENTRY/1/model.py.
        models = [Path(a).parent.parent.name for a in arguments if a.endswith("/1/model.py")]
        name = models[0] if models else Path(arguments[0]).name
        seconds[name] = seconds.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return seconds


def _cache_counts(server: EmbeddedServer) -> dict[str, dict[str, float]]:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as page:
        return read_cache_metrics(page.read().decode())


_COMPUTE = ("compute_input", "compute_infer", "compute_output")


def _model_seconds(url: str) -> dict[str, dict[str, float]]:
    """Per model, Triton's cumulative seconds spent queued and executing, and executions."""
    with grpcclient.InferenceServerClient(url) as client:
        stats = client.get_inference_statistics(as_json=True)["model_stats"]
    seconds = {}
    for model in stats:
        infer = model["inference_stats"]
        seconds[model["name"]] = {
            "queue_s": int(infer["queue"].get("ns", 0)) / 1e9,
            "compute_s": sum(int(infer[k].get("ns", 0)) for k in _COMPUTE) / 1e9,
            "executions": int(model.get("execution_count", 0)),
        }
    return seconds


def duplicate_runs(base: ServedRun, work_dir: Path, frames: int, fraction: float) -> dict:
    """Reads of one chunk served as they are and with `fraction` copies added, the embedders'
    cache off and on (one server each, off and on interleaved): reads/s and same-run ratios."""
    size = base.chunk_size
    unique = work_dir / f"reads_{size}.fasta"
    unique_frames = make_workload(unique, frames, size, seed=3, lengths=(size // 2, size + 1))
    copies = work_dir / f"reads_{size}_copies.fasta"
    workloads = {
        0.0: (unique, sum(1 for _ in SeqIO.parse(unique, "fasta")), len(unique_frames)),
        fraction: (copies, *add_duplicates(unique, copies, fraction, size)),
    }
    runs, rate = {}, {}
    for f, (fasta, reads, frame_count) in workloads.items():
        for cache_bytes in (0, repo.EMBEDDING_CACHE_BYTES):
            key = f"f={f:g}, cache {'on' if cache_bytes else 'off'}"
            set_embedding_cache(base.repository, cache_bytes)
            out = work_dir / f"out_reads_{size}_{f:g}_{cache_bytes}"
            run = dataclasses.replace(base, fasta=fasta, frames=frame_count, out=out)
            runs[key] = served(run)
            runs[key] |= {"reads": reads, "reads_per_s": reads / runs[key]["seconds"]}
            rate[key] = runs[key]["reads_per_s"]
    set_embedding_cache(base.repository, repo.EMBEDDING_CACHE_BYTES)
    base_rate, off, on = (
        rate["f=0, cache off"],
        rate[f"f={fraction:g}, cache off"],
        rate[f"f={fraction:g}, cache on"],
    )
    return {
        "duplicate_fraction": fraction,
        "runs": runs,
        "no_duplicates_on_over_off": rate["f=0, cache on"] / base_rate,
        "duplicates_on_over_off": on / off,
        "duplicates_on_over_no_duplicates_off": on / base_rate,
        "target_over_no_duplicates": 0.9 / (1 - fraction),
    }


def served_fp8(
    models: dict, run: ServedRun, workload: list, bf16_verdicts: list[bool], device: torch.device
) -> dict:
    """What `export --fp8 auto` would write for these weights (decided on the probe against this
    repository's DNABERT-S and balanced classifiers), served again, and how far results move:
    verdicts per frame against the bf16 run (`bf16_verdicts`), embeddings in-process."""
    start = time.perf_counter()
    setting, verified = choose_fp8(repo.FP8_AUTO, models["esm2"], run.repository, device)
    layers = fp8_layers(setting, models["esm2"])
    chosen = {
        "decision_s": time.perf_counter() - start,
        "layers": len(layers),
        "of": len(linear_layers(models["esm2"])),
        "kinds": dict(Counter(name.split(".", 2)[2] for name in layers)),
        "verified": verified,
    }
    click.echo(f"fp8 auto: {verified} ({chosen['decision_s']:.0f} s)")
    if not layers:
        return chosen
    # Only the esm2 entry's config.pbtxt changes; its weights stay as they are.
    dim = models["esm2"].config.embed_dim
    spec, widths = repo.spec_of(repo.ESM2), {repo.WIDTH: dim}
    fp8_config = repo.entry_config(spec, widths, {"fp8": setting, repo.FP8_VERIFIED: verified})
    repo.write_entry(run.repository, fp8_config, source=repo.BENCH_SOURCE)
    fp8_run = dataclasses.replace(run, out=run.out.with_name(run.out.name + "_fp8"))
    try:
        result = served(fp8_run)
    finally:
        repo.write_entry(run.repository, repo.entry_config(spec, widths), source=repo.BENCH_SOURCE)
    fp8_verdicts = verdicts(fp8_run.out / "run")
    return {
        **chosen,
        **result,
        "virus_share": sum(fp8_verdicts) / len(fp8_verdicts),
        "verdict_agreement": agreement(bf16_verdicts, fp8_verdicts),
        "embedding_cosine": fp8_cosine(models, layers, workload[:2_000], device),
    }
