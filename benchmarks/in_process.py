"""The models resident in this process: the reference tools' way (padded batches in input order)
and the entries' own embedders without the server."""

from __future__ import annotations

import copy
import statistics
import time

import torch

from virnucpro_triton import repository as repo
from virnucpro_triton.backends.torch_backend import TorchBackend
from virnucpro_triton.models.esm2 import PAD_IDX, pad_batch
from virnucpro_triton.models.fp8 import swap_layers, to_fp8
from virnucpro_triton.sequence_embedders import DnaEmbedder, ProteinEmbedder


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def in_process(
    models: dict, frames: list, device: torch.device, batch: int = 256
) -> tuple[dict, list[bool]]:
    """The reference tools' way: resident models, input-order padded batches, SDPA.

    Returns the measurements and, per frame, whether it was called virus."""
    dna = DnaEmbedder(TorchBackend(models["dnabert"], device), models["tokenizer"])
    protein = ProteinEmbedder(TorchBackend(models["esm2"], device))
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
    sync(device)
    start = time.perf_counter()
    probabilities = torch.cat(run(len(frames)))
    sync(device)
    seconds = time.perf_counter() - start
    tokens = {"dna": sum(map(len, dna_tokens)), "protein": sum(map(len, protein_tokens))}
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    stats = {"frames_per_s": len(frames) / seconds, "seconds": seconds, "tokens": tokens}
    return {**stats, "gpu_peak_gib": peak}, (probabilities[:, 1] > probabilities[:, 0]).tolist()


@torch.inference_mode()
def models_alone(
    models: dict,
    frames: list,
    device: torch.device,
    compiled: bool | None = None,
    packed: bool = True,
    batch_invariant: bool = False,
) -> dict:
    """The served embedders without the server: each model's entry embedder (packed and
    compiled on a GPU, warmed up as the entries load them) on sets of one execute's frames.
    Per model the median frames/s over the sets: a set that met a recompilation (counted) is
    a cold cost, not the speed. Both together is what served would reach if the GPU never
    waited between executes. `compiled`, `packed`, `batch_invariant`: the embedders with one
    of those changed, for what each costs (invariance_cost.py)."""
    if compiled is None:
        compiled = device.type == "cuda"
    dna_backend = TorchBackend(copy.deepcopy(models["dnabert"]), device, compiled)
    dna = DnaEmbedder(dna_backend, models["tokenizer"], batch_invariant=batch_invariant)
    protein_backend = TorchBackend(copy.deepcopy(models["esm2"]), device, compiled)
    protein_backend.packed = protein_backend.packed and packed
    protein = ProteinEmbedder(protein_backend, batch_invariant=batch_invariant)
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
            sync(device)
            start = time.perf_counter()
            embed(texts)
            sync(device)
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


@torch.inference_mode()
def fp8_cosine(models: dict, layers: list[str], frames: list, device: torch.device) -> dict:
    """Pooled ESM-2 embeddings with `layers` in FP8 against bf16, on the same frames."""
    proteins = [f.protein for f in frames]
    bf16 = ProteinEmbedder(TorchBackend(models["esm2"], device))(proteins)
    originals = to_fp8(models["esm2"], layers)
    try:
        fp8 = ProteinEmbedder(TorchBackend(models["esm2"], device))(proteins)
    finally:
        swap_layers(models["esm2"], originals)
    cosine = torch.cosine_similarity(torch.from_numpy(bf16), torch.from_numpy(fp8))
    return {"frames": len(frames), "min": cosine.min().item(), "mean": cosine.mean().item()}
