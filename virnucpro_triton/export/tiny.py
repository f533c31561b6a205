"""Tiny random-weight models of the real architectures, for the demo and the tests.

Their verdicts mean nothing; they exist so that the whole served path (tokenizers, BLS,
batching, outputs) runs on any laptop in seconds.
"""

from __future__ import annotations

from pathlib import Path

import torch

from virnucpro_triton.models.dnabert_s import DnabertConfig, DnabertS, build_dna_bpe_tokenizer
from virnucpro_triton.models.esm2 import Esm2, Esm2Config
from virnucpro_triton.models.mlp import MLPClassifier
from virnucpro_triton.repository import CHUNK_SIZES

TINY_DNABERT = DnabertConfig(
    vocab_size=256, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
)
TINY_ESM2 = Esm2Config(num_layers=2, embed_dim=32, attention_heads=4)


def _randomize(model: torch.nn.Module, generator: torch.Generator) -> torch.nn.Module:
    """Random values everywhere (norms and BatchNorm statistics too), so nothing is trivial."""
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point() or name.endswith("inv_freq"):
                continue
            noise = torch.randn(tensor.shape, generator=generator) * 0.2
            if name.endswith("running_var"):
                tensor.copy_(1 + noise.abs())
            elif name.endswith("weight") and tensor.dim() == 1:  # LayerNorm / BatchNorm scales
                tensor.copy_(1 + noise)
            else:
                tensor.copy_(noise)
    return model.eval()


def tiny_models(
    tokenizer_dir: Path, seed: int = 0, chunk_sizes: tuple[int, ...] = CHUNK_SIZES
) -> tuple[DnabertS, Path, Esm2, dict[int, MLPClassifier]]:
    """(DNABERT-S, its tokenizer.json, ESM-2, {chunk size: classifier}) with random weights."""
    generator = torch.Generator().manual_seed(seed)
    tokenizer_json = tokenizer_dir / "tokenizer.json"
    build_dna_bpe_tokenizer(TINY_DNABERT.vocab_size, seed).save(str(tokenizer_json))
    dnabert = _randomize(DnabertS(TINY_DNABERT), generator)
    esm2 = _randomize(Esm2(TINY_ESM2), generator)
    features = TINY_DNABERT.hidden_size + TINY_ESM2.embed_dim
    classifiers = {size: _randomize(MLPClassifier(features, 16), generator) for size in chunk_sizes}
    return dnabert, tokenizer_json, esm2, classifiers
