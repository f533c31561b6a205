"""What every embedding backend offers: where a model runs, behind one interface.

The model of text-embeddings-inference's `Backend`: the embedders (sequence_embedders.py)
tokenize and batch, a backend turns each batch of token ids into pooled embeddings, and one
factory (backends/factory.py) builds the backend an entry's architecture.json names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np
    import torch

    from virnucpro_triton.models.esm2 import Packed

# Runs an exported graph somewhere (its Triton entry through BLS, or onnxruntime at export):
# named input arrays -> its one requested output array.
GraphRun = Callable[[dict[str, "np.ndarray"]], "np.ndarray"]
# A classifier wherever it runs: features [B, F] (fp32) -> class probabilities [B, 2] (fp32).
Classify = Callable[["np.ndarray"], "np.ndarray"]


class Backend(Protocol):
    """An embedding model where it runs: batches of token ids in, pooled embeddings out."""

    dim: int  # width of the embeddings
    device: torch.device  # where the embedders put the batches they hand over
    # Batches packed (embed_packed: no padding, the budget counts real tokens), not padded.
    packed: bool
    # Compiled on first use: the embedder warms it up before requests wait for it.
    compiled: bool
    fp8: str  # what FP8 does here, for the log; "" without FP8

    def embed(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Right-padded ids [B, L] and their mask (True at real tokens), on `device` -> [B, dim]
        fp32, possibly still queued on `device`."""
        ...

    def embed_packed(self, ids: torch.Tensor, packing: Packed) -> torch.Tensor:
        """Ids laid end to end [T] and their packing, on `device` -> [N, dim] fp32 (`packed`
        backends only)."""
        ...
