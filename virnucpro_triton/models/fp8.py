"""FP8 (e4m3) matmuls for GPUs that have them (compute capability 8.9+: Ada, Hopper).

Weights get one scale per output row, tokens one per row, set from their largest magnitude, and
the product runs in `torch._scaled_mm` with bf16 output. Only ESM-2's feed-forward layers are
converted: on random-weight ESM-2 3B that keeps pooled embeddings within cosine 0.9993 of bf16
at 1.18x the speed; every linear layer in FP8 ran 1.30x but fell to cosine 0.998, below the
0.999 the project accepts (docs/performance.md). An entry's `fp8` setting chooses this
(repository.weights.apply_fp8).
"""

from __future__ import annotations

import torch
from torch import nn

from virnucpro_triton.models.esm2 import Esm2

_E4M3_MAX = torch.finfo(torch.float8_e4m3fn).max


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

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight, scale = _rowwise(linear.weight.detach())
        self.register_buffer("weight", weight)  # [out, in]: .t() is the column-major operand
        self.register_buffer("weight_scale", scale.t().contiguous())  # [1, out]
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens, scale = _rowwise(x.reshape(-1, x.shape[-1]))
        y = torch._scaled_mm(
            tokens, self.weight.t(), scale_a=scale, scale_b=self.weight_scale, out_dtype=x.dtype
        )
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], y.shape[-1])


def fp8_feed_forward(model: Esm2) -> Esm2:
    """Convert, in place, the two feed-forward layers of every block of a bf16 ESM-2."""
    if model.embed_tokens.weight.dtype != torch.bfloat16:
        raise ValueError(
            f"FP8 feed-forward needs a bf16 model, not {model.embed_tokens.weight.dtype}"
        )
    for block in model.blocks:
        block.fc1, block.fc2 = Fp8Linear(block.fc1), Fp8Linear(block.fc2)
    return model
