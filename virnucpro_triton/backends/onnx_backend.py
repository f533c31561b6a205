"""Embedding models exported as ONNX graphs, run elsewhere: the `*_onnx` Triton entry through
BLS when served, onnxruntime at export. The ids leave as numpy arrays, so they stay on the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from virnucpro_triton.backends.base import GraphRun
from virnucpro_triton.models.esm2 import Packed
from virnucpro_triton.repository.spec import ATTENTION_MASK, INPUT_IDS


class OnnxBackend:
    """An exported graph that takes INPUT_IDS (and ATTENTION_MASK where it declares one) INT64
    [B, L] and returns its embeddings [B, dim] fp32 (see backends/base.py `Backend`)."""

    device = torch.device("cpu")
    packed = False
    compiled = False
    fp8 = ""

    def __init__(self, run: GraphRun, input_names: Sequence[str], dim: int):
        self.run = run
        self.input_names = tuple(input_names)
        self.dim = dim

    def embed(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        tensors = {INPUT_IDS.name: ids, ATTENTION_MASK.name: mask}
        arrays = {name: tensors[name].long().numpy() for name in self.input_names}
        return torch.from_numpy(self.run(arrays))

    def embed_packed(self, ids: torch.Tensor, packing: Packed) -> torch.Tensor:
        raise NotImplementedError("an ONNX graph takes padded batches")
