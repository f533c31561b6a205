"""VirNucPro's own way, as its units.py runs the two models: the baseline users ask for.

- ESM-2 in fp32 as fair-esm's `ESM2`, in fair-esm's batches of at most 2,048 tokens
  (`FastaBatchedDataset.get_batch_indices`, one extra token per sequence as fair-esm's extract
  script counts) made by the alphabet's batch converter; the last layer's representation, moved
  to the CPU, mean over the residues (no <cls>, <eos> or padding);
- DNABERT-S in fp32, one sequence at a time with no padding, mean over all its tokens ([CLS]
  and [SEP] included).

Both carry the weights of the repository's entries (in fp32), so that their embeddings can be
held against the served ones.
"""

from __future__ import annotations

import copy
import time
from functools import partial

import numpy as np
import torch
from tokenizers import Tokenizer

from benchmarks.in_process import sync
from virnucpro_triton import repository as repo
from virnucpro_triton.models.esm2 import Esm2

TOKS_PER_BATCH = 2048
# fair-esm's ESM-2 has a language-model head and a contact head; the served model neither.
_HEADS = ("lm_head.", "contact_head.")
_ROTARY = "rot_emb.inv_freq"


def fair_esm(esm2: Esm2, device: torch.device) -> torch.nn.Module:
    """fair-esm's `ESM2` of `esm2`'s size with its weights, in fp32 on `device`."""
    from esm.model.esm2 import ESM2

    config = esm2.config
    with torch.device(device):
        model = ESM2(
            config.num_layers,
            config.embed_dim,
            config.attention_heads,
            alphabet="ESM-1b",
            token_dropout=config.token_dropout,
        )
    # Weights only: the rotary frequencies stay fair-esm's own fp32 ones, which `esm2` in half
    # precision holds rounded.
    weights = {k: v for k, v in esm2.state_dict().items() if not k.endswith(_ROTARY)}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    left = [k for k in missing if not k.startswith(_HEADS) and not k.endswith(_ROTARY)]
    if left or unexpected:
        raise ValueError(f"fair-esm's ESM2 does not take these weights: {left + unexpected}")
    return model.float().eval()


@torch.inference_mode()
def esm2_embeddings(
    model: torch.nn.Module, proteins: list[str], device: torch.device
) -> np.ndarray:
    from esm import FastaBatchedDataset

    dataset = FastaBatchedDataset([str(i) for i in range(len(proteins))], proteins)
    batches = dataset.get_batch_indices(TOKS_PER_BATCH, extra_toks_per_seq=1)
    convert = model.alphabet.get_batch_converter()
    layer = model.num_layers
    out = np.empty((len(proteins), model.embed_dim), np.float32)
    for batch in batches:
        labels, strs, tokens = convert([(dataset.sequence_labels[i], proteins[i]) for i in batch])
        found = model(tokens.to(device), repr_layers=[layer], return_contacts=False)
        representation = found["representations"][layer].to("cpu")
        for row, (label, protein) in enumerate(zip(labels, strs, strict=True)):
            out[int(label)] = representation[row, 1 : len(protein) + 1].mean(0).numpy()
    return out


@torch.inference_mode()
def dnabert_embeddings(
    model: torch.nn.Module, tokenizer: Tokenizer, dna: list[str], device: torch.device
) -> np.ndarray:
    out = np.empty((len(dna), model.config.hidden_size), np.float32)
    for i, sequence in enumerate(dna):
        ids = torch.tensor([tokenizer.encode(sequence).ids], device=device)
        out[i] = model.embed(ids, torch.ones_like(ids, dtype=torch.bool))[0].cpu().numpy()
    return out


def virnucpro_own(
    models: dict, frames: list, device: torch.device
) -> tuple[dict, dict[str, np.ndarray]]:
    """Frames/s of VirNucPro's way on `frames` (DNABERT-S's time and ESM-2's added, as it runs
    them one after the other), and the embeddings it made, by entry name."""
    esm2 = fair_esm(models["esm2"], device)
    dnabert = copy.deepcopy(models["dnabert"]).float().eval()
    tokenizer = Tokenizer.from_file(str(models["tokenizer"]))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    dna, proteins = [f.nucleotide for f in frames], [f.protein for f in frames]
    # Warm-up on a few frames: kernels selected, memory pools filled.
    dnabert_embeddings(dnabert, tokenizer, dna[:8], device)
    esm2_embeddings(esm2, proteins[:8], device)
    seconds = {}
    embeddings = {}
    for name, embed in (
        (repo.DNABERT_S, partial(dnabert_embeddings, dnabert, tokenizer, dna, device)),
        (repo.ESM2, partial(esm2_embeddings, esm2, proteins, device)),
    ):
        sync(device)
        start = time.perf_counter()
        embeddings[name] = embed()
        sync(device)
        seconds[name] = time.perf_counter() - start
    del esm2, dnabert
    if device.type == "cuda":
        torch.cuda.empty_cache()  # what comes next takes the memory
    total = sum(seconds.values())
    stats = {
        "frames": len(frames),
        "frames_per_s": len(frames) / total,
        "seconds": total,
        "dnabert_s_seconds": seconds[repo.DNABERT_S],
        "esm2_seconds": seconds[repo.ESM2],
        "toks_per_batch": TOKS_PER_BATCH,
    }
    return stats, embeddings


def embedding_difference(own: np.ndarray, served: np.ndarray) -> dict:
    """How far the served embeddings of the same frames are from VirNucPro's own."""
    a, b = torch.from_numpy(own[: len(served)]), torch.from_numpy(served)
    return {
        "frames": len(b),
        "max_abs_diff": (a - b).abs().max().item(),
        "min_cosine": torch.cosine_similarity(a, b).min().item(),
    }
