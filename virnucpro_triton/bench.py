"""`make bench`: the served pipeline against VirNucPro's in-process way, in one run.

Builds the full-size architectures with random weights (speed does not depend on the values),
writes them into a model repository, and on the same frames measures
  (a) in-process: DNABERT-S + ESM-2 + classifier resident on the GPU, batches of 256 frames in
      input order, padded, SDPA attention, bf16 — how the reference tools run;
  (b) served: FASTA -> client -> embedded tritonserver -> pipeline -> result files;
  (c) models alone: the entries' embedders without the server (`models_alone`);
and reports frames/s, the ratios b/a and b/c, GPU memory peak, GPU busy % and an MFU estimate.
On a GPU with FP8 it lets `export --fp8 auto`'s check choose ESM-2's FP8 layers for these
weights, serves again with them and reports how far verdicts and embeddings move. `--tiny` runs
the same on the demo-size models (the CPU smoke run in the tests).
`--duplicate-fraction F` also serves reads of which F are copies of others (half of them reverse
complements), with the embedders' cache of embeddings off and on, and the same reads without the
copies. Every served run reports the CPU seconds of the server, each entry's stubs and the client.
"""

from __future__ import annotations

import copy
import json
import os
import random
import statistics
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import click
import numpy as np
import torch
import tritonclient.grpc as grpcclient
from Bio import SeqIO
from google.protobuf import text_format

from virnucpro_triton import repository as repo
from virnucpro_triton.commands.predict import predict
from virnucpro_triton.embedders import DnaEmbedder, ProteinEmbedder
from virnucpro_triton.export.fp8_choice import choose_fp8
from virnucpro_triton.export.repository_writer import export_pipeline
from virnucpro_triton.export.tiny import TINY_DNABERT, TINY_ESM2
from virnucpro_triton.models.classifier import MLPClassifier
from virnucpro_triton.models.dnabert_s import DnabertConfig, DnabertS, build_dna_bpe_tokenizer
from virnucpro_triton.models.esm2 import ESM2_SIZES, PAD_IDX, Esm2, Esm2Config, pad_batch
from virnucpro_triton.models.fp8 import fp8_unavailable, linear_layers, swap_layers, to_fp8
from virnucpro_triton.results import frame_table
from virnucpro_triton.sequence import chunks, reverse_complement, six_frames
from virnucpro_triton.server import EmbeddedServer
from virnucpro_triton.serving.embedding_cache import read_cache_metrics

H100_BF16_DENSE_TFLOPS = 989.0  # spec sheet, SXM
_STOPS = {"TAA", "TAG", "TGA"}
STOP_FREE_CODONS = [
    a + b + c for a in "ACGT" for b in "ACGT" for c in "ACGT" if a + b + c not in _STOPS
]


def make_workload(
    path: Path,
    frames_wanted: int,
    chunk_size: int,
    seed: int = 0,
    lengths: tuple[int, int] | None = None,
) -> list:
    """Write a FASTA of ORF-rich and random contigs until its chunks yield `frames_wanted`
    stop-free frames; return those frames in input order. `lengths` [lo, hi): reads of those
    lengths instead of contigs of one to four chunks."""
    rng = random.Random(seed)
    shortest, longest = lengths or (chunk_size, 4 * chunk_size)
    frames = []
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        n = 0
        while len(frames) < frames_wanted:
            length = rng.randrange(shortest, longest)
            if n % 4 == 3:  # random DNA: mostly no stop-free frame, as in real metagenomes
                seq = "".join(rng.choice("ACGT") for _ in range(length))
            else:
                seq = "".join(rng.choice(STOP_FREE_CODONS) for _ in range(length // 3))
            handle.write(f">contig_{n}\n{seq}\n")
            for _, chunk in chunks(f"contig_{n}", seq, chunk_size):
                frames.extend(f for f in six_frames(chunk) if f is not None)
            n += 1
    return frames


def add_duplicates(
    source: Path, target: Path, fraction: float, chunk_size: int, seed: int = 4
) -> tuple[int, int]:
    """Write `source`'s reads plus copies of random ones, so that `fraction` of all reads are
    copies, every second one reverse complemented, in shuffled order; return (reads, frames).

    A read and its reverse complement have the same six frames (F and R swapped) when it is one
    chunk long, as short reads are; reads of several chunks are chunked from the other end."""
    rng = random.Random(seed)
    originals = [(r.id, str(r.seq)) for r in SeqIO.parse(source, "fasta")]
    reads = list(originals)
    for i in range(round(len(originals) * fraction / (1 - fraction))):
        name, seq = rng.choice(originals)
        reads.append((f"{name}_copy{i}", reverse_complement(seq) if i % 2 else seq))
    rng.shuffle(reads)
    with open(target, "w") as handle:
        handle.writelines(f">{name}\n{seq}\n" for name, seq in reads)
    frames = sum(
        frame is not None
        for name, seq in reads
        for _, chunk in chunks(name, seq, chunk_size)
        for frame in six_frames(chunk)
    )
    return len(reads), frames


def build_repository(repository: Path, tiny: bool, device: torch.device) -> dict:
    """Random-weight models in bf16 (fp32 for --tiny on CPU), written as repository entries."""
    dtype = "fp32" if tiny else "bf16"
    dna_config = TINY_DNABERT if tiny else DnabertConfig()
    esm_config = TINY_ESM2 if tiny else Esm2Config(*ESM2_SIZES["esm2_t36_3B_UR50D"])
    with torch.device(device):
        dnabert, esm2 = DnabertS(dna_config).eval(), Esm2(esm_config).eval()
        features = dna_config.hidden_size + esm_config.embed_dim
        classifier = MLPClassifier(features, 16 if tiny else 512).eval()
    for kind, model, dim in [
        (repo.DNABERT_S, dnabert, dna_config.hidden_size),
        (repo.ESM2, esm2, esm_config.embed_dim),
    ]:
        config = repo.entry_config(repo.spec_of(kind), {repo.WIDTH: dim})
        architecture = repo.architecture_of(kind, model, dtype)
        repo.write_entry(repository, config, model, architecture, source=repo.BENCH_SOURCE)
    tokenizer = repository / repo.DNABERT_S / "1" / repo.TOKENIZER
    build_dna_bpe_tokenizer(dna_config.vocab_size).save(str(tokenizer))
    _write_classifiers(repository, classifier)
    export_pipeline(repository)
    half = repo.torch_dtype(dtype)
    return {
        "dnabert": dnabert.to(half),
        "esm2": esm2.to(half),
        "classifier": classifier,
        "tokenizer": tokenizer,
        "matmul_params": {"dna": _matmul_params(dnabert), "protein": _matmul_params(esm2)},
    }


def _write_classifiers(repository: Path, classifier: MLPClassifier) -> None:
    features = classifier.hidden_layer.in_features
    architecture = repo.architecture_of("classifier", classifier, "fp32")
    for size in repo.CHUNK_SIZES:
        name = repo.classifier_name(size)
        config = repo.entry_config(repo.spec_of(name), {repo.FEATURE_WIDTH: features})
        repo.write_entry(repository, config, classifier, architecture, source=repo.BENCH_SOURCE)


@torch.inference_mode()
def balance_classifier(models: dict, repository: Path, frames: list, device: torch.device) -> None:
    """Shift the random classifier's output bias so that it calls half of `frames` virus.

    Random weights tend to call nearly every frame one class, and then any variant agrees with
    any other; balanced, verdict agreement between variants measures something.
    """
    dna = DnaEmbedder(models["dnabert"], models["tokenizer"], device)
    protein = ProteinEmbedder(models["esm2"], device)
    features = torch.from_numpy(
        np.concatenate(
            [dna([f.nucleotide for f in frames]), protein([f.protein for f in frames])], axis=1
        )
    ).to(device)
    classifier = models["classifier"]
    log_p = classifier(features).log()
    classifier.output_layer.bias[1] -= (log_p[:, 1] - log_p[:, 0]).median()
    _write_classifiers(repository, classifier)


def _verdicts(out_dir: Path) -> list[bool]:
    """Per frame of a served run, in input order: called virus?"""
    rows = frame_table.read_frames(out_dir / frame_table.FILES["tsv"])
    return [row.p_virus > row.p_others for row in rows]


def _agreement(a: list[bool], b: list[bool]) -> float:
    return sum(x == y for x, y in zip(a, b, strict=True)) / len(a)


@torch.inference_mode()
def fp8_cosine(models: dict, layers: list[str], frames: list, device: torch.device) -> dict:
    """Pooled ESM-2 embeddings with `layers` in FP8 against bf16, on the same frames."""
    proteins = [f.protein for f in frames]
    bf16 = ProteinEmbedder(models["esm2"], device)(proteins)
    originals = to_fp8(models["esm2"], layers)
    try:
        fp8 = ProteinEmbedder(models["esm2"], device)(proteins)
    finally:
        swap_layers(models["esm2"], originals)
    cosine = torch.cosine_similarity(torch.from_numpy(bf16), torch.from_numpy(fp8))
    return {"frames": len(frames), "min": cosine.min().item(), "mean": cosine.mean().item()}


def _matmul_params(model: torch.nn.Module) -> int:
    """Weights that multiply every token (2-D, not embedding tables): 2 FLOP each per token."""
    return sum(
        p.numel() for name, p in model.named_parameters() if p.dim() == 2 and "embed" not in name
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def in_process(
    models: dict, frames: list, device: torch.device, batch: int = 256
) -> tuple[dict, list[bool]]:
    """The reference tools' way: resident models, input-order padded batches, SDPA.

    Returns the measurements and, per frame, whether it was called virus."""
    dna = DnaEmbedder(models["dnabert"], models["tokenizer"], device)
    protein = ProteinEmbedder(models["esm2"], device)
    dna_tokens = dna.tokenize([f.nucleotide for f in frames])
    protein_tokens = protein.tokenize([f.protein for f in frames])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def run(count: int) -> list[torch.Tensor]:
        probabilities = []
        for i in range(0, count, batch):
            ids = pad_batch(dna_tokens[i : i + batch], dna.pad_id).to(device)
            a = models["dnabert"].embed(ids, ids != dna.pad_id)
            b = models["esm2"].embed(pad_batch(protein_tokens[i : i + batch], PAD_IDX).to(device))
            probabilities.append(models["classifier"](torch.cat([a, b], dim=1)).cpu())
        return probabilities

    run(min(len(frames), 2 * batch))  # warm-up: kernels selected, memory pools filled
    _sync(device)
    start = time.perf_counter()
    probabilities = torch.cat(run(len(frames)))
    _sync(device)
    seconds = time.perf_counter() - start
    tokens = {"dna": sum(map(len, dna_tokens)), "protein": sum(map(len, protein_tokens))}
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    stats = {"frames_per_s": len(frames) / seconds, "seconds": seconds, "tokens": tokens}
    return {**stats, "gpu_peak_gib": peak}, (probabilities[:, 1] > probabilities[:, 0]).tolist()


@torch.inference_mode()
def models_alone(models: dict, frames: list, device: torch.device) -> dict:
    """The served embedders without the server: each model's entry embedder (packed and
    compiled on a GPU, warmed up as the entries load them) on sets of one execute's frames.
    Per model the median frames/s over the sets: a set that met a recompilation (counted) is
    a cold cost, not the speed. Both together is what served would reach if the GPU never
    waited between executes."""
    compiled = device.type == "cuda"
    dna = DnaEmbedder(
        copy.deepcopy(models["dnabert"]), models["tokenizer"], device, compiled=compiled
    )
    protein = ProteinEmbedder(copy.deepcopy(models["esm2"]), device, compiled=compiled)
    if compiled:
        dna.warm_up()
        protein.warm_up()
    graphs = torch._dynamo.utils.counters["stats"]
    before = graphs["unique_graphs"]
    step = repo.EMBEDDER_MAX_BATCH
    rates: dict[str, list[float]] = {repo.DNABERT_S: [], repo.ESM2: []}
    for i in range(0, len(frames), step):
        part = frames[i : i + step]
        for name, embed, texts in (
            (repo.DNABERT_S, dna, [f.nucleotide for f in part]),
            (repo.ESM2, protein, [f.protein for f in part]),
        ):
            _sync(device)
            start = time.perf_counter()
            embed(texts)
            _sync(device)
            rates[name].append(len(part) / (time.perf_counter() - start))
    recompilations = graphs["unique_graphs"] - before
    del dna, protein
    torch._dynamo.reset()  # its caches hold the copies' compiled blocks
    if compiled:
        torch.cuda.empty_cache()  # the server about to start takes the memory
    dna_rate, esm2_rate = (statistics.median(rates[n]) for n in (repo.DNABERT_S, repo.ESM2))
    return {
        "frames_per_s": 1 / (1 / dna_rate + 1 / esm2_rate),
        "esm2_frames_per_s": esm2_rate,
        "dnabert_s_frames_per_s": dna_rate,
        "dnabert_s_share": esm2_rate / (dna_rate + esm2_rate),
        "frames_per_set": step,
        "sets": len(rates[repo.ESM2]),
        "recompilations": recompilations,
    }


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


def served(
    repository: Path,
    fasta: Path,
    frames: int,
    chunk_size: int,
    out: Path,
    batch_chunks: int,
    in_flight: int,
    gpus: str | None = None,
) -> dict:
    """The served path; `gpus` (CUDA_VISIBLE_DEVICES of the server) limits the GPUs it sees."""
    warmup = out / "warmup.fasta"  # a smaller workload of its own: first calls, memory pools
    make_workload(warmup, min(frames, 2_000), chunk_size, seed=1)
    start = time.perf_counter()
    server = EmbeddedServer(repository, gpus=gpus).start()
    try:
        ready = time.perf_counter() - start
        predict(
            warmup,
            chunk_size,
            out / "warmup",
            server.grpc_url,
            batch_chunks=batch_chunks,
            max_in_flight=in_flight,
            progress=False,
        )
        before = _model_seconds(server.grpc_url)
        cpu_before, cache_before = _cpu_seconds(server.pid), _cache_counts(server)
        client_before = time.process_time()
        with GpuSampler() as gpu:
            start = time.perf_counter()
            summary = predict(
                fasta,
                chunk_size,
                out / "run",
                server.grpc_url,
                batch_chunks=batch_chunks,
                max_in_flight=in_flight,
                progress=False,
            )
            seconds = time.perf_counter() - start
        # The client is this process: its CPU time includes the GPU sampler's thread (tiny).
        cpu = {"client": time.process_time() - client_before}
        cpu |= {k: v - cpu_before.get(k, 0.0) for k, v in _cpu_seconds(server.pid).items()}
        cache = _cache_counts(server)
        after = _model_seconds(server.grpc_url)
    finally:
        server.stop()
    assert summary.frames == frames, (summary.frames, frames)
    return {
        "frames_per_s": frames / seconds,
        "seconds": seconds,
        "cold_start_s": ready,
        **gpu.summary(),
        "cpu_ms_per_frame": {k: round(1000 * v / frames, 4) for k, v in cpu.items()},
        "cpu_cores_busy": {k: round(v / seconds, 3) for k, v in cpu.items()},
        "embedding_cache": {
            model: {k: v - cache_before.get(model, {}).get(k, 0.0) for k, v in counts.items()}
            for model, counts in cache.items()
        },
        "model_seconds": {
            model: {k: round(after[model][k] - before[model][k], 3) for k in after[model]}
            for model in after
        },
    }


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


def set_embedding_cache(repository: Path, cache_bytes: int) -> None:
    """Set the dnabert_s and esm2 entries' cache size in their config.pbtxt (weights untouched)."""
    from tritonclient.grpc import model_config_pb2

    for name in (repo.DNABERT_S, repo.ESM2):
        path = repository / name / "config.pbtxt"
        config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        config.parameters[repo.EMBEDDING_CACHE_PARAMETER].string_value = str(cache_bytes)
        path.write_text(text_format.MessageToString(config))


def duplicate_runs(
    repository: Path, work_dir: Path, size: int, frames: int, fraction: float, client: tuple
) -> dict:
    """Reads of one chunk served as they are and with `fraction` copies added, the embedders'
    cache off and on (one server each, off and on interleaved): reads/s and same-run ratios."""
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
            set_embedding_cache(repository, cache_bytes)
            out = work_dir / f"out_reads_{size}_{f:g}_{cache_bytes}"
            runs[key] = served(repository, fasta, frame_count, size, out, *client)
            runs[key] |= {"reads": reads, "reads_per_s": reads / runs[key]["seconds"]}
            rate[key] = runs[key]["reads_per_s"]
    set_embedding_cache(repository, repo.EMBEDDING_CACHE_BYTES)
    base, off, on = (
        rate["f=0, cache off"],
        rate[f"f={fraction:g}, cache off"],
        rate[f"f={fraction:g}, cache on"],
    )
    return {
        "duplicate_fraction": fraction,
        "runs": runs,
        "no_duplicates_on_over_off": rate["f=0, cache on"] / base,
        "duplicates_on_over_off": on / off,
        "duplicates_on_over_no_duplicates_off": on / base,
        "target_over_no_duplicates": 0.9 / (1 - fraction),
    }


def served_fp8(
    models: dict, arguments: tuple, workload: list, verdicts: list[bool], device: torch.device
) -> dict:
    """What `export --fp8 auto` would write for these weights (decided on the probe against this
    repository's DNABERT-S and balanced classifiers), served again, and how far results move:
    verdicts per frame against the bf16 run (`verdicts`), embeddings in-process."""
    repository, out = arguments[0], arguments[4].with_name(arguments[4].name + "_fp8")
    start = time.perf_counter()
    setting, verified = choose_fp8(repo.FP8_AUTO, models["esm2"], repository, device)
    layers = repo.fp8_layers(setting, models["esm2"])
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
    repo.write_entry(repository, fp8_config, source=repo.BENCH_SOURCE)
    try:
        result = served(*arguments[:4], out, *arguments[5:])
    finally:
        repo.write_entry(repository, repo.entry_config(spec, widths), source=repo.BENCH_SOURCE)
    fp8_verdicts = _verdicts(out / "run")
    return {
        **chosen,
        **result,
        "virus_share": sum(fp8_verdicts) / len(fp8_verdicts),
        "verdict_agreement": _agreement(verdicts, fp8_verdicts),
        "embedding_cosine": fp8_cosine(models, layers, workload[:2_000], device),
    }


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


_COMPUTE = ("compute_input", "compute_infer", "compute_output")


@click.command()
@click.option("--tiny", is_flag=True, help="Demo-size models (CPU smoke run).")
@click.option(
    "--chunk-size",
    "chunk_sizes",
    type=click.Choice([str(s) for s in repo.CHUNK_SIZES]),
    multiple=True,
    help="Measure only these chunk sizes (default: all).",
)
@click.option("--frames", type=int, default=20_000, show_default=True, help="Per chunk size.")
@click.option(
    "--batch-chunks",
    type=int,
    default=512,
    show_default=True,
    help="Chunks per request: what the README recommends for a GPU server.",
)
@click.option("--in-flight", type=int, default=32, show_default=True)
@click.option(
    "--gpu-scaling",
    is_flag=True,
    help="Also serve from the first GPU alone, for the speed-up of all GPUs over one.",
)
@click.option(
    "--fp8/--no-fp8",
    default=None,
    help="Also serve with the FP8 layers that `export --fp8 auto` verifies for these weights and "
    "measure how far results move (default: when the GPU has FP8).",
)
@click.option(
    "--duplicate-fraction",
    type=click.FloatRange(0, 0.9),
    default=0.0,
    help="Also serve reads of which this share are copies (half reverse complements), "
    "embedding cache off and on, against the same reads without copies.",
)
@click.option("--work-dir", type=click.Path(path_type=Path), default=Path("build/bench"))
@click.option("--json-out", type=click.Path(path_type=Path), default=Path("build/bench.json"))
def main(
    tiny: bool,
    chunk_sizes: tuple[str, ...],
    frames: int,
    batch_chunks: int,
    in_flight: int,
    gpu_scaling: bool,
    fp8: bool | None,
    duplicate_fraction: float,
    work_dir: Path,
    json_out: Path,
) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    no_fp8 = fp8_unavailable(device)
    if fp8 is None:
        fp8 = no_fp8 is None
    elif fp8 and no_fp8:
        raise click.UsageError(f"--fp8: {no_fp8}")
    work_dir.mkdir(parents=True, exist_ok=True)
    json_out.parent.mkdir(parents=True, exist_ok=True)
    repository = work_dir / "repository"
    models = build_repository(repository, tiny, device)
    calibration = make_workload(work_dir / "calibration.fasta", min(frames, 2_000), 300, seed=2)
    balance_classifier(models, repository, calibration, device)
    results = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "gpus_visible": torch.cuda.device_count(),
        "models": "tiny" if tiny else "DNABERT-S 117M + ESM-2 3B (random weights), bf16",
        "frames_per_chunk_size": frames,
        "batch_chunks": batch_chunks,
        "in_flight": in_flight,
        "runs": {},
    }
    for size in map(int, chunk_sizes or repo.CHUNK_SIZES):
        fasta = work_dir / f"workload_{size}.fasta"
        workload = make_workload(fasta, frames, size)
        baseline, reference = in_process(models, workload, device)
        alone = models_alone(models, workload, device)
        out = work_dir / f"out_{size}"
        arguments = (repository, fasta, len(workload), size, out, batch_chunks, in_flight)
        serve = served(*arguments)
        verdicts = _verdicts(out / "run")
        serve["virus_share"] = sum(verdicts) / len(verdicts)
        # Batching, compilation and bf16 rounding alone move this many verdicts: the yardstick
        # for FP8's agreement below (a balanced random head sits close to every frame).
        serve["verdict_agreement_with_in_process"] = _agreement(reference, verdicts)
        # Weight matmuls on real (unpadded) tokens; attention scores add < 1% at these lengths.
        flops = sum(
            2 * models["matmul_params"][k] * baseline["tokens"][k] for k in ("dna", "protein")
        )
        tflops = flops / serve["seconds"] / 1e12
        run = results["runs"][str(size)] = {
            "frames": len(workload),
            "in_process": baseline,
            "served": serve,
            "served_over_in_process": serve["frames_per_s"] / baseline["frames_per_s"],
            "models_alone": alone,
            "served_over_models_alone": serve["frames_per_s"] / alone["frames_per_s"],
            "served_tflops": tflops,
            "served_mfu_h100_bf16": tflops / H100_BF16_DENSE_TFLOPS if not tiny else None,
        }
        click.echo(
            f"{size} bp: {len(workload)} frames | in-process "
            f"{baseline['frames_per_s']:.0f}/s | served {serve['frames_per_s']:.0f}/s | "
            f"ratio {serve['frames_per_s'] / baseline['frames_per_s']:.2f} | models alone "
            f"{alone['frames_per_s']:.0f}/s (served {run['served_over_models_alone']:.0%} of it) | "
            f"GPU busy {serve['gpu_busy_pct']} % | cold start {serve['cold_start_s']:.0f} s"
        )
        if gpu_scaling:
            one = served(*arguments, gpus="0")
            run["served_one_gpu"] = one
            run["all_gpus_over_one"] = serve["frames_per_s"] / one["frames_per_s"]
            click.echo(
                f"{size} bp: served on 1 GPU {one['frames_per_s']:.0f}/s | on "
                f"{results['gpus_visible']} GPUs {serve['frames_per_s']:.0f}/s | "
                f"{run['all_gpus_over_one']:.2f}x"
            )
        if duplicate_fraction:
            client = (batch_chunks, in_flight)
            cached = duplicate_runs(repository, work_dir, size, frames, duplicate_fraction, client)
            run["embedding_cache"] = cached
            click.echo(
                f"{size} bp reads/s, cache off/on: no copies "
                f"{cached['runs']['f=0, cache off']['reads_per_s']:.0f}/"
                f"{cached['runs']['f=0, cache on']['reads_per_s']:.0f} "
                f"({cached['no_duplicates_on_over_off']:.3f}x) | {duplicate_fraction:g} copies "
                f"{cached['duplicates_on_over_off']:.2f}x | on over no copies "
                f"{cached['duplicates_on_over_no_duplicates_off']:.2f}x "
                f"(target {cached['target_over_no_duplicates']:.2f}x)"
            )
        if fp8:
            served_fp = served_fp8(models, arguments, workload, verdicts, device)
            run["served_fp8"] = served_fp
            if served_fp["layers"]:  # else nothing passed: no FP8 run
                run["served_fp8_over_in_process"] = (
                    served_fp["frames_per_s"] / baseline["frames_per_s"]
                )
                click.echo(
                    f"{size} bp: served with FP8 on {served_fp['layers']} of {served_fp['of']} "
                    f"linear layers {served_fp['frames_per_s']:.0f}/s | ratio "
                    f"{run['served_fp8_over_in_process']:.2f} | verdicts agree on "
                    f"{served_fp['verdict_agreement']:.2%} of frames | embedding cosine min "
                    f"{served_fp['embedding_cosine']['min']:.5f}"
                )
        json_out.write_text(json.dumps(results, indent=2) + "\n")  # kept if a later run fails
    click.echo(f"written {json_out}")


if __name__ == "__main__":
    main()
