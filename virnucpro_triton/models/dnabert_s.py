"""DNABERT-S (a DNABERT-2 / MosaicBERT encoder) without remote code.

Parameter names follow the released checkpoint so its state dict loads as is.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from torch import nn

DNA_SPECIAL_TOKENS = ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]")


@dataclass
class DnabertConfig:
    vocab_size: int = 4096
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    layer_norm_eps: float = 1e-12
    type_vocab_size: int = 2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """ALiBi slopes; a non power of two adds every other slope of the next power (MosaicBERT)."""

    def power_of_2(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start ** (i + 1) for i in range(n)]

    if math.log2(num_heads).is_integer():
        return torch.tensor(power_of_2(num_heads))
    closest = 2 ** math.floor(math.log2(num_heads))
    extra = alibi_slopes(2 * closest)[0::2][: num_heads - closest]
    return torch.cat([torch.tensor(power_of_2(closest)), extra])


class Embeddings(nn.Module):
    def __init__(self, config: DnabertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # Token type is always 0; there are no position embeddings (ALiBi does positions).
        return self.LayerNorm(
            self.word_embeddings(input_ids) + self.token_type_embeddings.weight[0]
        )


class SelfAttention(nn.Module):
    def __init__(self, config: DnabertConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.Wqkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        B, L, H = x.shape
        q, k, v = self.Wqkv(x).view(B, L, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return out.transpose(1, 2).reshape(B, L, H)


class AttentionOutput(nn.Module):
    def __init__(self, config: DnabertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class Attention(nn.Module):
    def __init__(self, config: DnabertConfig):
        super().__init__()
        self.self = SelfAttention(config)
        self.output = AttentionOutput(config)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, bias), x)


class GatedMLP(nn.Module):
    def __init__(self, config: DnabertConfig):
        super().__init__()
        self.intermediate_size = config.intermediate_size
        self.gated_layers = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.wo = nn.Linear(config.intermediate_size, config.hidden_size)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gated, linear = self.gated_layers(x).split(self.intermediate_size, dim=-1)
        return self.layernorm(self.wo(F.gelu(gated) * linear) + x)


class Layer(nn.Module):
    def __init__(self, config: DnabertConfig):
        super().__init__()
        self.attention = Attention(config)
        self.mlp = GatedMLP(config)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.attention(x, bias))


class Encoder(nn.Module):
    def __init__(self, config: DnabertConfig):
        super().__init__()
        self.layer = nn.ModuleList(Layer(config) for _ in range(config.num_hidden_layers))


class DnabertS(nn.Module):
    def __init__(self, config: DnabertConfig):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config)

    @property
    def blocks(self) -> nn.ModuleList:
        """The repeated transformer layers (compiled one at a time, sharing one graph)."""
        return self.encoder.layer

    def attention_bias(self, attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """[B, heads, L, L] additive bias: ALiBi by position (any length), -inf at padded keys."""
        pos = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        distance = (pos[None, :] - pos[:, None]).abs().float()
        # Slopes are built here in fp32, not kept as a buffer that .to(bf16) would round.
        slopes = alibi_slopes(self.config.num_attention_heads).to(attention_mask.device)
        alibi = -slopes[:, None, None] * distance
        bias = alibi[None].masked_fill(~attention_mask[:, None, None, :], float("-inf"))
        return bias.to(dtype)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Last hidden state [B, L, H]; rows at padded positions are meaningless."""
        x = self.embeddings(input_ids)
        bias = self.attention_bias(attention_mask.bool(), x.dtype)
        for layer in self.encoder.layer:
            x = layer(x, bias)
        return x

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean of the last hidden state over all real tokens, [CLS] and [SEP] included, in fp32."""
        mask = attention_mask.bool()
        hidden = self(input_ids, mask).float()
        weights = mask.unsqueeze(-1).float()
        return (hidden * weights).sum(1) / weights.sum(1)


def build_dna_bpe_tokenizer(vocab_size: int, seed: int = 0) -> Tokenizer:
    """A DNABERT-2 style BPE tokenizer trained on a seeded random ACGT corpus (tests and demo).

    Same layout as the released tokenizer.json: [UNK]=0 [CLS]=1 [SEP]=2 [PAD]=3 [MASK]=4 and a
    "[CLS] $A [SEP]" post-processor. Training is deterministic for a given (vocab_size, seed).
    """
    rng = random.Random(seed)
    # Enough text that BPE can fill the vocabulary (4^6 = 4096 distinct 6-mers).
    corpus = ["".join(rng.choices("ACGT", k=1000)) for _ in range(max(64, vocab_size // 2))]
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(DNA_SPECIAL_TOKENS), show_progress=False
    )
    tokenizer.train_from_iterator(corpus, trainer)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    return tokenizer
