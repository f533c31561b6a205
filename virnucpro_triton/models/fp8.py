"""FP8 (e4m3) matmuls for ESM-2's linear layers, on GPUs that have them (sm_89+: Ada, Hopper).

Weights get one scale per output row, tokens one per row, set from their largest magnitude, and
the product runs in `torch._scaled_mm` with bf16 output. Which layers run in FP8 is the esm2
entry's `fp8` setting (backends/torch_backend.py), which export chooses and verifies on the
real weights (export/fp8_choice.py): how far FP8 moves the embeddings, and what it gains,
differs per layer and per set of weights (docs/performance.md). Export, on machines without
FP8, emulates the
arithmetic (`emulate`: the same e4m3 values and scales, the product in fp32).
"""

from __future__ import annotations

import torch
from torch import nn

from virnucpro_triton.models.esm2 import Esm2

_E4M3_MAX = torch.finfo(torch.float8_e4m3fn).max

# Each block's linear layers, by their names inside the block.
BLOCK_LINEARS = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.out_proj",
    "fc1",
    "fc2",
)
FEED_FORWARD = ("fc1", "fc2")


def fp8_unavailable(device: torch.device) -> str | None:
    """Why FP8 matmuls cannot run on `device`, or None when they can."""
    if device.type != "cuda":
        return f"{device} is not a CUDA GPU"
    if torch.cuda.get_device_capability(device) < (8, 9):
        return f"{torch.cuda.get_device_name(device)} has no FP8 tensor cores (needs sm_89+)"
    return None


def _rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [R, K] as e4m3 values and their fp32 scales [R, 1]."""
    scale = x.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / _E4M3_MAX
    return (x.float() / scale).to(torch.float8_e4m3fn), scale


class Fp8Linear(nn.Module):
    """A bf16 nn.Linear whose product runs in e4m3, scaled per weight row and per token."""

    def __init__(self, linear: nn.Linear, emulate: bool = False):
        super().__init__()
        weight, scale = _rowwise(linear.weight.detach())
        self.register_buffer("weight", weight)  # [out, in]: .t() is the column-major operand
        self.register_buffer("weight_scale", scale.t().contiguous())  # [1, out]
        self.bias = linear.bias
        self.emulate = emulate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens, scale = _rowwise(x.reshape(-1, x.shape[-1]))
        if self.emulate:
            y = ((tokens.float() * scale) @ self.weight.float().t() * self.weight_scale).to(x.dtype)
        else:
            y = torch._scaled_mm(
                tokens, self.weight.t(), scale_a=scale, scale_b=self.weight_scale, out_dtype=x.dtype
            )
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], y.shape[-1])


def linear_layers(model: Esm2, kinds: tuple[str, ...] = BLOCK_LINEARS) -> list[str]:
    """The blocks' linear layers of `kinds`, by module name ("layers.3.fc1"), block by block."""
    return [f"layers.{i}.{name}" for i in range(len(model.blocks)) for name in kinds]


def swap_layers(model: nn.Module, replacements: dict[str, nn.Module]) -> dict[str, nn.Module]:
    """Put each module of `replacements` at its name in `model`; returns the ones it replaced."""
    replaced = {}
    for name, module in replacements.items():
        parent, _, leaf = name.rpartition(".")
        replaced[name] = model.get_submodule(name)
        setattr(model.get_submodule(parent), leaf, module)
    return replaced


def to_fp8(model: Esm2, names: list[str], emulate: bool = False) -> dict[str, nn.Module]:
    """Convert the named linear layers of a bf16 ESM-2 in place; returns the bf16 originals
    (swap_layers(model, originals) puts them back)."""
    if model.embed_tokens.weight.dtype != torch.bfloat16:
        raise ValueError(f"FP8 layers need a bf16 model, not {model.embed_tokens.weight.dtype}")
    layers = {name: Fp8Linear(model.get_submodule(name), emulate) for name in names}
    return swap_layers(model, layers)
