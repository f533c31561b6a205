"""Embedding models in torch: compiled on a GPU, ESM-2 packed in half precision, FP8 where the
entry says so (its `fp8` setting, which export chose: export/fp8_choice.py)."""

from __future__ import annotations

import torch

from virnucpro_triton.models.dnabert_s import DnabertS
from virnucpro_triton.models.esm2 import Esm2, Packed, packable
from virnucpro_triton.models.fp8 import (
    BLOCK_LINEARS,
    FEED_FORWARD,
    fp8_unavailable,
    linear_layers,
    to_fp8,
)
from virnucpro_triton.repository.spec import FP8_ALL, FP8_FEED_FORWARD, FP8_NONE


class TorchBackend:
    """DNABERT-S or ESM-2 on `device`, as its own module (see backends/base.py `Backend`)."""

    def __init__(
        self, model: DnabertS | Esm2, device: torch.device, compiled: bool = False, fp8: str = ""
    ):
        self.model = model.to(device).eval()
        self.device = device
        self.compiled = compiled
        self.fp8 = fp8
        if isinstance(model, Esm2):  # ESM-2 derives its mask from <pad>
            self.dim = model.config.embed_dim
            self.packed = packable(device, model.embed_tokens.weight.dtype)
            self._forward = lambda ids, mask: model.embed(ids)
        else:
            self.dim = model.config.hidden_size
            self.packed = False
            self._forward = model.embed
        self._run = self._forward
        if compiled:
            # Fuses the element-wise work between the matmuls (docs/performance.md). Each
            # transformer block is compiled on its own and all blocks share one graph, which
            # compiles far sooner than the whole model as one. Symbolic shapes, so one graph
            # serves every batch shape.
            for block in self.model.blocks:
                block.compile(dynamic=True)
            forward = self._forward
            # A batch of one row would be compiled again (size-1 dimensions are specialized):
            # it runs as two copies of itself instead.
            self._run = lambda ids, mask: (
                forward(ids.repeat(2, 1), mask.repeat(2, 1))[:1]
                if len(ids) == 1
                else forward(ids, mask)
            )

    def embed(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self._run(ids, mask).float()

    def embed_packed(self, ids: torch.Tensor, packing: Packed) -> torch.Tensor:
        return self.model.embed_packed(ids, packing)


def fp8_layers(setting: str, model: torch.nn.Module) -> list[str]:
    """The ESM-2 linear layers an entry's `fp8` setting names (spec.FP8_*): none, a named set,
    or a comma-separated list of layers."""
    sets = {FP8_NONE: (), FP8_FEED_FORWARD: FEED_FORWARD, FP8_ALL: BLOCK_LINEARS}
    if setting in ("", *sets):
        return linear_layers(model, sets.get(setting, ()))
    names, known = setting.split(","), set(linear_layers(model))
    for name in names:
        if name not in known:
            raise ValueError(
                f"fp8: {name!r} is not a linear layer of this ESM-2; the setting is one of "
                f"{', '.join(sets)} or a comma-separated list of layers (layers.0.fc1,...)"
            )
    return names


def apply_fp8(model: torch.nn.Module, setting: str, device: torch.device) -> str:
    """Apply an esm2 entry's `fp8` setting to `model`, in place.

    Returns what was done, for the log: FP8 needs a GPU that has it (models/fp8.py); elsewhere
    the model stays bf16, whose results are within the same tolerance.
    """
    names = fp8_layers(setting, model)
    if not names:
        return ""
    # A named set by its name, a list by its size.
    what = (
        f"fp8 {setting}"
        if setting in (FP8_FEED_FORWARD, FP8_ALL)
        else (f"fp8 on {len(names)} of {len(linear_layers(model))} linear layers")
    )
    problem = fp8_unavailable(device)
    if problem:
        return f"{what} not applied: {problem}"
    to_fp8(model, names)
    return what
