"""ESM-2 (fair-esm's `esm.model.esm2.ESM2`) as a short module with fair-esm's parameter names.

Same math as fair-esm. Two layouts of a batch: right-padded [B, L] token ids, attention through
`F.scaled_dot_product_attention` with a padding mask (every device, ONNX export); or `Packed`,
the real tokens of every sequence one after another [T], attention through flash varlen
(CUDA, bf16/fp16): no pad token in any matmul, and a flash kernel where a padding mask allows
none (docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# fair-esm "ESM-1b" alphabet (also used by ESM-2).
PROTEIN_ALPHABET: tuple[str, ...] = (
    ("<cls>", "<pad>", "<eos>", "<unk>")
    + tuple("LAGVSERTIDPKQNFYMHWCXBUZO.-")
    + ("<null_1>", "<mask>")
)
TOKEN_TO_ID: dict[str, int] = {tok: i for i, tok in enumerate(PROTEIN_ALPHABET)}
CLS_IDX = TOKEN_TO_ID["<cls>"]
PAD_IDX = TOKEN_TO_ID["<pad>"]
EOS_IDX = TOKEN_TO_ID["<eos>"]
UNK_IDX = TOKEN_TO_ID["<unk>"]
MASK_IDX = TOKEN_TO_ID["<mask>"]

# name -> (layers, hidden, heads), as fair-esm's pretrained models define them
ESM2_SIZES: dict[str, tuple[int, int, int]] = {
    "esm2_t6_8M_UR50D": (6, 320, 20),
    "esm2_t12_35M_UR50D": (12, 480, 20),
    "esm2_t30_150M_UR50D": (30, 640, 20),
    "esm2_t33_650M_UR50D": (33, 1280, 20),
    "esm2_t36_3B_UR50D": (36, 2560, 40),
    "esm2_t48_15B_UR50D": (48, 5120, 40),
}


def infer_esm2_heads(num_layers: int, embed_dim: int) -> int:
    """Attention heads of a released size; falls back on the width alone (each width is unique)."""
    for layers, dim, heads in ESM2_SIZES.values():
        if (layers, dim) == (num_layers, embed_dim):
            return heads
    for _, dim, heads in ESM2_SIZES.values():
        if dim == embed_dim:
            return heads
    raise ValueError(f"no released ESM-2 size has {num_layers} layers of width {embed_dim}")


def encode_protein(seq: str) -> list[int]:
    """`<cls>` + one token per residue + `<eos>`; letters outside the alphabet become `<unk>`."""
    return [CLS_IDX, *(TOKEN_TO_ID.get(c, UNK_IDX) for c in seq), EOS_IDX]


def pad_batch(token_lists: list[list[int]], pad_id: int, width: int = 0) -> torch.Tensor:
    """Right-pad token id lists into a LongTensor [B, width] (at least the longest list's
    length; right padding keeps positions)."""
    width = max(width, *(len(t) for t in token_lists))
    out = torch.full((len(token_lists), width), pad_id, dtype=torch.long)
    for row, tokens in zip(out, token_lists, strict=True):
        row[: len(tokens)] = torch.tensor(tokens, dtype=torch.long)
    return out


@dataclass(frozen=True)
class Packed:
    """Sequences laid end to end: sequence i holds tokens cu[i]:cu[i + 1] of the batch."""

    cu: torch.Tensor  # int32 [N + 1], cumulative lengths from 0
    max_len: int  # longest sequence
    positions: torch.Tensor  # long [T]: each token's position in its sequence
    sequence: torch.Tensor  # long [T]: each token's sequence

    @staticmethod
    def of(lengths: Sequence[int]) -> Packed:
        """Packing (on the CPU) of sequences of `lengths` tokens.

        In numpy: torch's CPU repeat_interleave wakes its OpenMP workers, which then spin and
        kept a second core of the esm2 stub busy (docs/performance.md)."""
        sizes = np.asarray(lengths, dtype=np.int64)
        ends = np.cumsum(sizes)
        sequence = np.repeat(np.arange(len(sizes)), sizes)
        positions = np.arange(int(ends[-1])) - (ends - sizes)[sequence]
        cu = torch.from_numpy(np.concatenate([[0], ends]).astype(np.int32))
        return Packed(cu, int(sizes.max()), torch.from_numpy(positions), torch.from_numpy(sequence))

    def to(self, device: torch.device, pinned: bool = False) -> Packed:
        """On `device`, in one copy; `pinned`: through pinned memory, without waiting for it."""
        host = torch.cat([self.cu.long(), self.positions, self.sequence])
        moved = (host.pin_memory() if pinned else host).to(device, non_blocking=pinned)
        cu, positions, sequence = moved.split([len(self.cu), *(len(self.positions),) * 2])
        return Packed(cu.int(), self.max_len, positions, sequence)


def packable(device: torch.device, dtype: torch.dtype) -> bool:
    """Flash varlen attention runs on CUDA in half precision only."""
    return device.type == "cuda" and dtype in (torch.bfloat16, torch.float16)


@dataclass
class Esm2Config:
    num_layers: int
    embed_dim: int
    attention_heads: int
    # fair-esm's ESM-2 layer norms are torch.nn.LayerNorm defaults (1e-5), as in HF configs.
    layer_norm_eps: float = 1e-5
    token_dropout: bool = True
    vocab_size: int = len(PROTEIN_ALPHABET)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class RotaryEmbedding(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        # Overwritten by the checkpoint's values, which were rounded in training.
        self.register_buffer("inv_freq", 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim)))

    def _apply(
        self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True
    ) -> RotaryEmbedding:
        # Keep inv_freq in fp32 when the model is cast to bf16/fp16: rounded frequencies would
        # shift the angles of far positions. Device moves still apply.
        inv_freq = self.inv_freq
        super()._apply(fn, recurse)
        self.inv_freq = inv_freq.to(self.inv_freq.device, torch.float32)
        return self

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """q, k [..., positions, heads or 1, head_dim] rotated by each row's position."""
        freqs = positions.float()[:, None] * self.inv_freq.float()
        emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]
        cos, sin = emb.cos().to(q.dtype), emb.sin().to(q.dtype)
        return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


class MultiheadAttention(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.rot_emb = RotaryEmbedding(self.head_dim)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | Packed) -> torch.Tensor:
        """x [B, L, D] with `keep` its SDPA mask, or [T, D] with its `Packed` layout."""
        *rows, D = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(*rows, self.num_heads, self.head_dim)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        if isinstance(keep, Packed):
            from torch.nn.attention.varlen import varlen_attn

            # The rotation is linear, so the kernel's 1/sqrt(head_dim) after it is fair-esm's
            # scaling of the queries before it.
            q, k = self.rot_emb(q, k, keep.positions)
            out = varlen_attn(q, k, v, keep.cu, keep.cu, keep.max_len, keep.max_len)
            return self.out_proj(out.reshape(*rows, D))
        # fair-esm scales queries before the rotation, so SDPA must not scale again.
        positions = torch.arange(x.shape[1], device=x.device)
        q, k = self.rot_emb(q * self.head_dim**-0.5, k, positions)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, heads, L, head_dim]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=1.0)
        return self.out_proj(out.transpose(1, 2).reshape(*rows, D))


class TransformerLayer(nn.Module):
    """Pre-LN block: attention then a 4x GELU feed-forward."""

    def __init__(self, embed_dim: int, num_heads: int, eps: float):
        super().__init__()
        self.self_attn = MultiheadAttention(embed_dim, num_heads)
        self.self_attn_layer_norm = nn.LayerNorm(embed_dim, eps=eps)
        self.fc1 = nn.Linear(embed_dim, 4 * embed_dim)
        self.fc2 = nn.Linear(4 * embed_dim, embed_dim)
        self.final_layer_norm = nn.LayerNorm(embed_dim, eps=eps)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | Packed) -> torch.Tensor:
        x = x + self.self_attn(self.self_attn_layer_norm(x), keep)
        return x + self.fc2(self._fc1_gelu(self.final_layer_norm(x)))

    def _fc1_gelu(self, x: torch.Tensor) -> torch.Tensor:
        # bf16/fp16 on a GPU: bias and GELU in the fc1 matmul's cuBLASLt epilogue, saving a pass
        # over the widest activation of each block (docs/performance.md). Its GELU is the tanh form,
        # applied to the fp32 accumulator: closer to fp32 erf GELU than erf after rounding to
        # bf16. fp32 keeps the exact erf GELU that ESM-2 was trained with.
        if (
            x.is_cuda
            and x.dtype in (torch.bfloat16, torch.float16)
            and type(self.fc1) is nn.Linear  # not FP8's replacement
            and not torch.onnx.is_in_onnx_export()
        ):
            flat = x.reshape(-1, x.shape[-1])
            out = torch._addmm_activation(self.fc1.bias, flat, self.fc1.weight.t(), use_gelu=True)
            return out.view(*x.shape[:-1], out.shape[-1])
        return F.gelu(self.fc1(x))


class Esm2(nn.Module):
    def __init__(self, config: Esm2Config):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.embed_dim, padding_idx=PAD_IDX)
        self.layers = nn.ModuleList(
            TransformerLayer(config.embed_dim, config.attention_heads, config.layer_norm_eps)
            for _ in range(config.num_layers)
        )
        self.emb_layer_norm_after = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)

    @property
    def blocks(self) -> nn.ModuleList:
        """The repeated transformer layers (compiled one at a time, sharing one graph)."""
        return self.layers

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Final representation [B, L, D] (after emb_layer_norm_after); tokens right-padded."""
        padding = tokens.eq(PAD_IDX)
        x = self.embed_tokens(tokens)
        if self.config.token_dropout:
            # Training zeroed 15% * 80% of embeddings; eval rescales by that ratio, per sequence.
            masked = tokens.eq(MASK_IDX)
            x = x.masked_fill(masked.unsqueeze(-1), 0.0)
            observed = masked.sum(-1).to(x.dtype) / (~padding).sum(-1)
            x = x * (1 - 0.15 * 0.8) / (1 - observed)[:, None, None]
        x = x * (1 - padding.unsqueeze(-1).type_as(x))
        # SDPA boolean mask: True = may attend. [B, 1, 1, L] broadcasts over heads and queries.
        keep = ~padding[:, None, None, :]
        for layer in self.layers:
            x = layer(x, keep)
        return self.emb_layer_norm_after(x)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Mean of the final representation over residues only (no <cls>, <eos>, padding), fp32."""
        residue = ~(tokens.eq(CLS_IDX) | tokens.eq(EOS_IDX) | tokens.eq(PAD_IDX))
        weights = residue.unsqueeze(-1).float()
        return (self(tokens).float() * weights).sum(1) / weights.sum(1)

    def embed_packed(self, tokens: torch.Tensor, packed: Packed) -> torch.Tensor:
        """`embed` of sequences laid end to end in `tokens` [T] (no padding): [N, D], fp32."""
        rows, sequence = packed.cu.shape[0] - 1, packed.sequence
        x = self.embed_tokens(tokens)
        if self.config.token_dropout:  # as in forward, per sequence
            masked = tokens.eq(MASK_IDX)
            x = x.masked_fill(masked[:, None], 0.0)
            lengths = packed.cu[1:] - packed.cu[:-1]
            observed = x.new_zeros(rows).index_add_(0, sequence, masked.to(x.dtype)) / lengths
            x = x * (1 - 0.15 * 0.8) / (1 - observed)[sequence, None]
        for layer in self.layers:
            x = layer(x, packed)
        x = self.emb_layer_norm_after(x).float()
        residue = (~(tokens.eq(CLS_IDX) | tokens.eq(EOS_IDX))).float()
        sums = x.new_zeros(rows, x.shape[1]).index_add_(0, sequence, x * residue[:, None])
        return sums / residue.new_zeros(rows).index_add_(0, sequence, residue)[:, None]
