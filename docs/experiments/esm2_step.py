"""Issue 17: what is left to take out of one esm2 execute on the GPU (docs/gaps-h200.json: the
shipped packed ProteinEmbedder embeds 1,000-frame sets at ~1,032 frames/s; served bf16 needs
~1,110 for 1,050 frames/s with DNABERT-S beside it).

ESM-2 3B (random weights, bf16), each block compiled, warmed up as the entry does; variants
alternated over sets of 1,000 fresh frames at 300 bp (one esm2 execute each):
  shipped       the ProteinEmbedder as served;
  rotary once   cos/sin of every token's position computed once per batch, not in each layer;
  fused qkv     q, k and v projections as one matmul (their weights concatenated);
  both          rotary once + fused qkv;
  rows 512      the shipped model in batches of up to 512 rows / 32,768 tokens;
and the shipped embedder on sets of 4,000 frames (a larger execute).
Prints frames/s (median over sets) and each variant's min cosine to the shipped embeddings.
Run on a CUDA GPU: python docs/experiments/esm2_step.py [out.json]
"""

from __future__ import annotations

import copy
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from virnucpro_triton.backends.torch_backend import TorchBackend
from virnucpro_triton.bench import make_workload
from virnucpro_triton.models.esm2 import (
    ESM2_SIZES,
    Esm2,
    Esm2Config,
    MultiheadAttention,
    Packed,
    rotate_half,
)
from virnucpro_triton.sequence_embedders import ProteinEmbedder

DEVICE = torch.device("cuda")


@dataclass(frozen=True)
class PackedRotated(Packed):
    cos: torch.Tensor = None  # [T, 1, head_dim]
    sin: torch.Tensor = None


class RotaryOnceEsm2(Esm2):
    def embed_packed(self, tokens, packed):
        rot = self.layers[0].self_attn.rot_emb
        freqs = packed.positions.float()[:, None] * rot.inv_freq.float()
        emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]
        dtype = self.embed_tokens.weight.dtype
        packed = PackedRotated(
            packed.cu,
            packed.max_len,
            packed.positions,
            packed.sequence,
            emb.cos().to(dtype),
            emb.sin().to(dtype),
        )
        return super().embed_packed(tokens, packed)


class VariantAttention(MultiheadAttention):
    fused = False

    def forward(self, x, keep):
        from torch.nn.attention.varlen import varlen_attn

        t, d = x.shape
        if self.fused:
            qkv = F.linear(x, self.qkv_weight, self.qkv_bias).view(t, 3, self.num_heads, -1)
            q, k, v = qkv.unbind(1)
        else:
            q, k, v = (
                p(x).view(t, self.num_heads, self.head_dim)
                for p in (self.q_proj, self.k_proj, self.v_proj)
            )
        if isinstance(keep, PackedRotated):
            q = q * keep.cos + rotate_half(q) * keep.sin
            k = k * keep.cos + rotate_half(k) * keep.sin
        else:
            q, k = self.rot_emb(q, k, keep.positions)
        out = varlen_attn(q, k, v, keep.cu, keep.cu, keep.max_len, keep.max_len)
        return self.out_proj(out.reshape(t, d))


def variant(model: Esm2, rotary_once: bool, fused: bool) -> Esm2:
    model = copy.deepcopy(model)
    if rotary_once:
        model.__class__ = RotaryOnceEsm2
    for layer in model.layers:
        attn = layer.self_attn
        attn.__class__ = VariantAttention
        if fused:
            attn.fused = True
            projections = (attn.q_proj, attn.k_proj, attn.v_proj)
            attn.register_buffer("qkv_weight", torch.cat([p.weight for p in projections]))
            attn.register_buffer("qkv_bias", torch.cat([p.bias for p in projections]))
    return model


def timed(embed: ProteinEmbedder, proteins: list[str]) -> tuple[float, torch.Tensor]:
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = embed(proteins)
    torch.cuda.synchronize()
    return len(proteins) / (time.perf_counter() - start), torch.from_numpy(out)


def main() -> None:
    frames = make_workload(Path("/tmp/step_frames.fa"), 16_000, 300, seed=7)
    proteins = [f.protein for f in frames]
    sets = [proteins[i : i + 1000] for i in range(0, 8000, 1000)]
    large = [proteins[i : i + 4000] for i in (8000, 12000)]
    torch.manual_seed(0)
    with torch.device(DEVICE):
        base = Esm2(Esm2Config(*ESM2_SIZES["esm2_t36_3B_UR50D"])).eval().to(torch.bfloat16)
    # Copies before any block is compiled in place.
    models = {
        "rotary once": variant(base, True, False),
        "fused qkv": variant(base, False, True),
        "both": variant(base, True, True),
    }
    embedders = {
        "shipped": ProteinEmbedder(TorchBackend(base, DEVICE, compiled=True)),
        **{
            name: ProteinEmbedder(TorchBackend(m, DEVICE, compiled=True))
            for name, m in models.items()
        },
        # The shipped model's blocks, compiled above.
        "rows 512": ProteinEmbedder(TorchBackend(base, DEVICE), token_budget=32_768, max_rows=512),
    }
    for name, embed in embedders.items():
        start = time.perf_counter()
        embed.warm_up()
        print(name, "warm-up", round(time.perf_counter() - start, 1), "s", flush=True)
    rates: dict[str, list[float]] = {name: [] for name in embedders}
    reference, cosine = {}, {name: 1.0 for name in embedders}
    for i, proteins_set in enumerate(sets):
        for name, embed in embedders.items():
            rate, vectors = timed(embed, proteins_set)
            rates[name].append(rate)
            if name == "shipped":
                reference[i] = vectors
            else:
                similarity = torch.cosine_similarity(vectors, reference[i]).min().item()
                cosine[name] = min(cosine[name], similarity)
        print(i, {k: round(v[-1]) for k, v in rates.items()}, flush=True)
    larger = [timed(embedders["shipped"], s)[0] for s in large]
    results = {
        "device": torch.cuda.get_device_name(DEVICE),
        "frames_per_s_1000_frame_sets": {
            name: {
                "median": statistics.median(v),
                "all": [round(r) for r in v],
                "cosine_min_vs_shipped": cosine[name],
            }
            for name, v in rates.items()
        },
        "shipped_4000_frame_sets": [round(r) for r in larger],
    }
    print(json.dumps(results, indent=2))
    if len(sys.argv) > 1:
        Path(sys.argv[1]).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
