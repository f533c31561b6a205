"""Issue 17, lever 2: packed (varlen) attention, CUDA graphs and two-stream overlap, measured.

ESM-2 3B (random weights, bf16) in-process on 3,000 frames at 300 bp, against the served way
(ProteinEmbedder: length-sorted 16,384-token padded batches, SDPA with a padding mask, each
block compiled):
  packed        every batch one stream of real tokens [T, D] (no pad token in any matmul),
                attention through `torch.nn.attention.varlen.varlen_attn` (flash, cu_seqlens);
  packed graph  the same at one fixed shape (T = the token budget, the tail a dummy sequence),
                captured once as a CUDA graph and replayed for every batch;
and DNABERT-S + ESM-2 one after the other against on two streams from two threads.
Prints frames/s (median of repeats, variants alternated) and the pooled embeddings' cosine to
the served way. This is the prototype that was measured (docs/lever2-h200.json); the packed
layout it kept now lives in models/esm2.py (`Packed`, `Esm2.embed_packed`).
Run on a CUDA GPU: python docs/experiments/lever2.py [out.json]
"""

from __future__ import annotations

import json
import statistics
import sys
import threading
import time
import traceback
from pathlib import Path

import torch
from fc1_gelu import timed  # beside this file
from torch import nn

from virnucpro_triton.backends.torch_backend import TorchBackend
from virnucpro_triton.bench import make_workload
from virnucpro_triton.models.dnabert_s import DnabertConfig, DnabertS, build_dna_bpe_tokenizer
from virnucpro_triton.models.esm2 import (
    CLS_IDX,
    EOS_IDX,
    ESM2_SIZES,
    PAD_IDX,
    Esm2,
    Esm2Config,
    encode_protein,
    rotate_half,
)
from virnucpro_triton.repository.spec import MAX_ROWS, TOKEN_BUDGET
from virnucpro_triton.sequence_embedders import DnaEmbedder, ProteinEmbedder

DEVICE = torch.device("cuda")


def packed_block(layer: nn.Module, x, cos, sin, cu, max_len: int):
    from torch.nn.attention.varlen import varlen_attn

    attn = layer.self_attn
    t, d = x.shape
    h = layer.self_attn_layer_norm(x)
    q = attn.q_proj(h).view(t, attn.num_heads, attn.head_dim)
    k = attn.k_proj(h).view(t, attn.num_heads, attn.head_dim)
    v = attn.v_proj(h).view(t, attn.num_heads, attn.head_dim)
    # Rotation is linear, so the kernel's 1/sqrt(d) after it equals fair-esm's scale before it.
    q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
    out = varlen_attn(q, k, v, cu, cu, max_len, max_len)
    x = x + attn.out_proj(out.reshape(t, d))
    return x + layer.fc2(layer._fc1_gelu(layer.final_layer_norm(x)))


class Packed:
    """ESM-2's forward over packed batches: same weights, no padding."""

    def __init__(self, model: Esm2, compiled: bool, graph: bool, max_len: int):
        self.model, self.graph = model, graph
        self.block = torch.compile(packed_block, dynamic=True) if compiled else packed_block
        # Fixed for the graph (the flash grid's size); a longer dummy tail is left uncomputed.
        self.max_len = max_len
        self.static = None

    def batches(self, lengths: list[int]) -> list[list[int]]:
        order = sorted(range(len(lengths)), key=lengths.__getitem__)
        out, cur, tokens = [], [], 0
        # the graph's dummy tail sequence takes one row
        rows = MAX_ROWS - 1 if self.graph else MAX_ROWS
        for i in order:
            if cur and (tokens + lengths[i] > TOKEN_BUDGET or len(cur) >= rows):
                out.append(cur)
                cur, tokens = [], 0
            cur.append(i)
            tokens += lengths[i]
        return out + [cur] if cur else out

    def inputs(self, token_lists: list[list[int]]):
        lengths = [len(t) for t in token_lists]
        ids = torch.tensor([i for t in token_lists for i in t], dtype=torch.long)
        positions = torch.cat([torch.arange(n) for n in lengths])
        seg = torch.cat([torch.full((n,), j) for j, n in enumerate(lengths)])
        if self.graph:  # fixed shapes: pad T with one dummy sequence, cu with empty ones
            tail = TOKEN_BUDGET - len(ids)
            ids = torch.cat([ids, torch.full((tail,), PAD_IDX)])
            positions = torch.cat([positions, torch.arange(tail) % self.max_len])
            seg = torch.cat([seg, torch.full((tail,), MAX_ROWS - 1)])
            lengths = lengths + [tail] + [0] * (MAX_ROWS - 1 - len(lengths))
        cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
        cu[1:] = torch.tensor(lengths).cumsum(0)
        return [t.pin_memory().to(DEVICE, non_blocking=True) for t in (ids, positions, seg, cu)]

    def forward(self, ids, positions, seg, cu, rows: int):
        m = self.model
        x = m.embed_tokens(ids) * (1 - 0.15 * 0.8)  # token dropout's rescale, no <mask> here
        freqs = positions.float()[:, None] * m.layers[0].self_attn.rot_emb.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        for layer in m.layers:
            x = self.block(layer, x, cos, sin, cu, self.max_len)
        x = m.emb_layer_norm_after(x).float()
        residue = (ids != CLS_IDX) & (ids != EOS_IDX) & (ids != PAD_IDX)
        sums = torch.zeros(rows, x.shape[1], device=x.device)
        sums.index_add_(0, seg, x * residue[:, None])
        counts = torch.zeros(rows, device=x.device).index_add_(0, seg, residue.float())
        return sums / counts.clamp(min=1)[:, None]

    @torch.inference_mode()
    def __call__(self, proteins: list[str]) -> torch.Tensor:
        tokens = [encode_protein(p) for p in proteins]
        results = []
        order = self.batches([len(t) for t in tokens])
        for batch in order:
            inputs = self.inputs([tokens[i] for i in batch])
            if self.graph:
                results.append(self.replay(inputs)[: len(batch)].clone())
            else:
                results.append(self.forward(*inputs, rows=len(batch)))
        out = torch.empty(len(proteins), results[0].shape[1])
        out[torch.tensor([i for b in order for i in b])] = torch.cat(results).cpu()
        return out

    def replay(self, inputs):
        if self.static is None:
            self.static = [t.clone() for t in inputs]
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):  # compile / select kernels outside the capture
                    self.forward(*self.static, rows=MAX_ROWS)
            torch.cuda.current_stream().wait_stream(stream)
            self.cuda_graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.cuda_graph):
                self.static_out = self.forward(*self.static, rows=MAX_ROWS)
        for static, new in zip(self.static, inputs, strict=True):
            static.copy_(new)
        self.cuda_graph.replay()
        return self.static_out


def overlap(dna: DnaEmbedder, protein: ProteinEmbedder, frames: list, repeats: int) -> dict:
    """DNABERT-S then ESM-2, against both at once on two streams (one thread each)."""
    nucleotides, proteins = [f.nucleotide for f in frames], [f.protein for f in frames]
    dna(nucleotides[:500]), protein(proteins[:500])
    rates = {"sequential": [], "two streams": [], "dnabert_s alone": []}

    def on_stream(stream, fn, args):
        with torch.cuda.stream(stream):
            fn(args)
            stream.synchronize()

    for _ in range(repeats):
        for name in rates:
            torch.cuda.synchronize()
            start = time.perf_counter()
            if name == "sequential":
                dna(nucleotides), protein(proteins)
            elif name == "dnabert_s alone":
                dna(nucleotides)
            else:
                threads = [
                    threading.Thread(target=on_stream, args=(torch.cuda.Stream(), fn, arg))
                    for fn, arg in ((dna, nucleotides), (protein, proteins))
                ]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
            torch.cuda.synchronize()
            rates[name].append(len(frames) / (time.perf_counter() - start))
    return {k: {"median": statistics.median(v), "all": v} for k, v in rates.items()}


def main() -> None:
    results: dict = {"device": torch.cuda.get_device_name(DEVICE), "errors": {}}
    frames = make_workload(Path("/tmp/lever2_frames.fa"), 3000, 300)
    proteins = [f.protein for f in frames]
    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = Esm2(Esm2Config(*ESM2_SIZES["esm2_t36_3B_UR50D"])).eval().to(torch.bfloat16)
    served = ProteinEmbedder(TorchBackend(model, DEVICE, compiled=True))
    longest = max(len(encode_protein(p)) for p in proteins)
    variants = {
        "served (padded, SDPA, compiled)": served,
        "packed eager": Packed(model, False, False, longest),
        "packed compiled": Packed(model, True, False, longest),
        "packed eager, CUDA graph": Packed(model, False, True, longest),
        "packed compiled, CUDA graph": Packed(model, True, True, longest),
    }
    rates, vectors = {}, {}
    for _ in range(2):  # alternated, so drift over the run falls on every variant
        for name, embed in variants.items():
            try:
                got, vectors[name] = timed(embed, proteins, repeats=2)
                rates.setdefault(name, []).extend(got)
                print(name, [round(r) for r in got], flush=True)
            except Exception:
                results["errors"][name] = traceback.format_exc()[-2000:]
                print(name, "FAILED", results["errors"][name], flush=True)
    reference = vectors["served (padded, SDPA, compiled)"].float()
    results["esm2_frames_per_s"] = {
        k: {
            "median": statistics.median(v),
            "all": v,
            "cosine_min_vs_served": torch.cosine_similarity(vectors[k].float(), reference)
            .min()
            .item(),
        }
        for k, v in rates.items()
    }
    try:
        with torch.device(DEVICE):
            dnabert = DnabertS(DnabertConfig()).eval().to(torch.bfloat16)
        tokenizer = Path("/tmp/lever2_tokenizer.json")
        build_dna_bpe_tokenizer(DnabertConfig().vocab_size).save(str(tokenizer))
        dna = DnaEmbedder(TorchBackend(dnabert, DEVICE, compiled=True), tokenizer)
        results["dnabert_then_esm2_frames_per_s"] = overlap(dna, served, frames, repeats=3)
    except Exception:
        results["errors"]["overlap"] = traceback.format_exc()[-2000:]
    print(json.dumps({k: v for k, v in results.items() if k != "errors"}, indent=2))
    print("errors:", list(results["errors"]))
    if len(sys.argv) > 1:
        Path(sys.argv[1]).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
