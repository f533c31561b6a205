"""Issue 17, lever 2: ESM-2's fc1 bias + GELU in the cuBLASLt matmul epilogue, measured.

`torch._addmm_activation(bias, x, w.t(), use_gelu=True)` (TransformerLayer._fc1_gelu on a GPU in
bf16) against `F.gelu(F.linear(x, w, b))`
(exact erf GELU, what ESM-2 was trained with). Prints: the fc1 op's error against an fp32
reference and its speed; ESM-2 3B (random weights, bf16) in-process frames/s, eager and with
per-block compilation as served, and pooled-embedding cosine against the unpatched model.
Run on a CUDA GPU: python docs/experiments/fc1_gelu.py
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from virnucpro_triton.backends.torch_backend import TorchBackend
from virnucpro_triton.bench import make_workload
from virnucpro_triton.models.esm2 import ESM2_SIZES, Esm2, Esm2Config, TransformerLayer
from virnucpro_triton.sequence_embedders import ProteinEmbedder


def plain_fc1_gelu(self: TransformerLayer, x: torch.Tensor) -> torch.Tensor:
    """fc1 then erf GELU, as before the epilogue (TransformerLayer._fc1_gelu)."""
    return F.gelu(self.fc1(x))


def op_numerics(device: torch.device) -> dict:
    from triton.testing import do_bench  # the GPU machine's triton

    torch.manual_seed(0)
    x = torch.randn(16384, 2560, device=device, dtype=torch.bfloat16)
    w = (torch.randn(10240, 2560, device=device) / 2560**0.5).to(torch.bfloat16)
    b = (torch.randn(10240, device=device) * 0.1).to(torch.bfloat16)
    reference = F.gelu(x.float() @ w.float().t() + b.float())
    plain = F.gelu(F.linear(x, w, b))
    fused = torch._addmm_activation(b, x, w.t(), use_gelu=True)
    tanh = F.gelu(F.linear(x, w, b), approximate="tanh")

    def error(out: torch.Tensor) -> dict:
        diff = out.float() - reference
        return {
            "rel_l2": (diff.norm() / reference.norm()).item(),
            "max_abs": diff.abs().max().item(),
        }

    flops = 2 * 16384 * 2560 * 10240
    times = {
        "plain_ms": do_bench(lambda: F.gelu(F.linear(x, w, b)), return_mode="median"),
        "fused_ms": do_bench(
            lambda: torch._addmm_activation(b, x, w.t(), use_gelu=True), return_mode="median"
        ),
    }
    return {
        "error_vs_fp32": {"plain_erf": error(plain), "fused": error(fused), "tanh": error(tanh)},
        **times,
        "plain_tflops": flops / times["plain_ms"] / 1e9,
        "fused_tflops": flops / times["fused_ms"] / 1e9,
    }


def timed(embed: Callable, proteins: list[str], repeats: int = 2) -> tuple[list, Tensor]:
    """frames/s of each repeat, and the last repeat's embeddings."""
    embed(proteins[:1000])  # warm-up: kernels, compilation, memory pools
    rates = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        out = embed(proteins)
        torch.cuda.synchronize()
        rates.append(len(proteins) / (time.perf_counter() - start))
    return rates, torch.as_tensor(out)


@torch.inference_mode()
def main() -> None:
    device = torch.device("cuda")
    results = {"device": torch.cuda.get_device_name(device), "op": op_numerics(device)}
    print(json.dumps(results["op"], indent=2), flush=True)
    proteins = [f.protein for f in make_workload(Path("/tmp/fc1_frames.fa"), 3000, 300)]
    with torch.device(device):
        model = Esm2(Esm2Config(*ESM2_SIZES["esm2_t36_3B_UR50D"])).eval().to(torch.bfloat16)
    variants = {"plain": plain_fc1_gelu, "fused": TransformerLayer._fc1_gelu}
    vectors, rates = {}, {}
    # Alternating variants, so drift over the run falls on both.
    for compiled in (False, True):
        for variant in ("plain", "fused", "plain", "fused"):
            TransformerLayer._fc1_gelu = variants[variant]
            torch._dynamo.reset()
            embed = ProteinEmbedder(TorchBackend(model, device, compiled=compiled))
            key = f"{variant} {'compiled' if compiled else 'eager'}"
            measured, vectors[key] = timed(embed, proteins)
            rates.setdefault(key, []).extend(measured)
            for block in model.blocks:  # undo block.compile for the next variant
                block._compiled_call_impl = None
    TransformerLayer._fc1_gelu = variants["fused"]
    results["frames_per_s"] = {
        k: {"median": statistics.median(v), "all": v} for k, v in rates.items()
    }
    results["cosine_vs_plain"] = {
        mode: {
            "min": torch.cosine_similarity(vectors[f"fused {mode}"], vectors[f"plain {mode}"])
            .min()
            .item()
        }
        for mode in ("eager", "compiled")
    }
    print(json.dumps(results, indent=2))
    if len(sys.argv) > 1:
        Path(sys.argv[1]).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
