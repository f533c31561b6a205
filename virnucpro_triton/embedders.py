"""Sequences in, pooled embeddings out: tokenization plus length-bucketed batches.

Used by the served `dnabert_s` and `esm2` models and by export's verification. Sequences are
sorted by length and grouped into batches under a token budget, so padding stays small; the
models mask padding out of attention and pooling, so the result of a sequence does not depend
on the batch it lands in. ESM-2 in half precision on a GPU takes its batches packed instead
(models/esm2.py `Packed`: no padding at all; the budget counts real tokens).

The model is the torch module, or a `GraphEmbedding`: the same model exported as an ONNX graph
and run elsewhere (its Triton entry through BLS, or onnxruntime at export). Tokenization and
batching are the same for both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from virnucpro_triton.alphabet import DNA, EXPECTED, PROTEIN, as_dna, first_invalid
from virnucpro_triton.models.dnabert_s import DnabertS
from virnucpro_triton.models.esm2 import (
    PAD_IDX,
    Esm2,
    Packed,
    encode_protein,
    packable,
    pad_batch,
)
from virnucpro_triton.repository.spec import (
    MAX_DNA_LENGTH,
    MAX_PROTEIN_LENGTH,
    MAX_ROWS,
    TOKEN_BUDGET,
)

# Runs an exported graph somewhere: named input arrays -> its (one requested) output array.
GraphRun = Callable[[dict[str, np.ndarray]], np.ndarray]


class GraphEmbedding:
    """Stands in for a torch embedding model whose exported graph runs elsewhere.

    `run` takes the graph's named INT64 inputs [B, L] and returns its output [B, dim] (fp32).
    """

    def __init__(self, run: GraphRun, input_names: Sequence[str], dim: int):
        self.run = run
        self.input_names = tuple(input_names)
        self.dim = dim

    def embed(self, *tensors: torch.Tensor) -> torch.Tensor:
        """Same arguments as the torch model's `embed`, in the graph's input order."""
        arrays = {
            name: t.long().cpu().numpy() for name, t in zip(self.input_names, tensors, strict=True)
        }
        return torch.from_numpy(self.run(arrays))


Model = torch.nn.Module | GraphEmbedding


def _batches(
    lengths: Sequence[int], token_budget: int, max_rows: int, padded: bool = True
) -> list[list[int]]:
    """Indices grouped into batches of similar length whose size (`padded`: as padded to the
    longest; else the tokens themselves) fits the budget."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    batches: list[list[int]] = []
    current: list[int] = []
    tokens = 0
    for index in order:
        # Sorted ascending, so the newest member is the longest of its batch.
        size = lengths[index] * (len(current) + 1) if padded else tokens + lengths[index]
        if current and (size > token_budget or len(current) >= max_rows):
            batches.append(current)
            current, tokens = [], 0
        current.append(index)
        tokens += lengths[index]
    if current:
        batches.append(current)
    return batches


class _Embedder:
    """Shared batching loop; subclasses turn text into token ids and ids into vectors."""

    pad_id: int
    dim: int
    warm_up_letters: str  # what synthetic sequences for warm_up() are made of
    packed = False  # batches as models/esm2.py `Packed` rather than padded

    def __init__(
        self,
        model: Model,
        device: torch.device,
        token_budget: int,
        max_rows: int,
        compiled: bool = False,
    ):
        self.model = model.to(device).eval() if isinstance(model, torch.nn.Module) else model
        self.device = device
        self.token_budget = token_budget
        self.max_rows = max_rows
        self._run = self._embed_ids
        if compiled:
            # Fuses the element-wise work between the matmuls (docs/performance.md). Each
            # transformer block is compiled on its own and all blocks share one graph: a fraction
            # of the whole model's compile time, at about its speed (docs/performance.md).
            # Symbolic shapes, so one graph serves every batch shape.
            for block in self.model.blocks:
                block.compile(dynamic=True)
            embed = self._embed_ids
            # A batch of one row would be compiled again (size-1 dimensions are specialized):
            # it runs as two copies of itself instead.
            self._run = lambda ids: embed(ids.repeat(2, 1))[:1] if len(ids) == 1 else embed(ids)

    def warm_up(self) -> None:
        """Compile, on batches of assorted shapes, before requests wait for it."""
        for lengths in ([10, 60, 170], [170, 170]):
            self([self.warm_up_letters * n for n in lengths])

    def tokenize(self, sequences: Sequence[str]) -> list[list[int]]:
        raise NotImplementedError

    def _embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _embed_batch(self, tokens: list[list[int]], pinned: bool) -> torch.Tensor:
        """One batch's vectors [B, dim] (fp32), queued on the device."""
        ids = pad_batch(tokens, self.pad_id)
        ids = ids.pin_memory() if pinned else ids
        return self._run(ids.to(self.device, non_blocking=pinned)).float()

    @torch.inference_mode()
    def __call__(self, sequences: Sequence[str]) -> np.ndarray:
        out = np.empty((len(sequences), self.dim), dtype=np.float32)
        if not sequences:
            return out
        tokens = self.tokenize(sequences)
        lengths = [len(t) for t in tokens]
        batches = _batches(lengths, self.token_budget, self.max_rows, padded=not self.packed)
        # Every batch is queued on the device before any result comes back, so the CPU pads
        # the next batch while the GPU computes this one; one copy back at the end.
        pinned = self.device.type == "cuda"
        vectors = [self._embed_batch([tokens[i] for i in batch], pinned) for batch in batches]
        out[np.concatenate(batches)] = torch.cat(vectors).cpu().numpy()
        return out


class DnaEmbedder(_Embedder):
    """DNABERT-S: BPE tokens wrapped in [CLS] ... [SEP], mean over all real tokens."""

    warm_up_letters = "ACGTTGCA"

    def __init__(
        self,
        model: DnabertS | GraphEmbedding,
        tokenizer_path: Path,
        device: torch.device,
        token_budget: int = TOKEN_BUDGET,
        max_rows: int = MAX_ROWS,
        compiled: bool = False,
    ):
        super().__init__(model, device, token_budget, max_rows, compiled)
        self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        pad = self.tokenizer.token_to_id("[PAD]")
        if pad is None:
            raise ValueError(f"{tokenizer_path}: the tokenizer has no [PAD] token")
        self.pad_id = pad
        self.dim = model.dim if isinstance(model, GraphEmbedding) else model.config.hidden_size

    def tokenize(self, sequences: Sequence[str]) -> list[list[int]]:
        dna = [as_dna(s) for s in sequences]  # RNA is embedded as the same DNA
        return [encoding.ids for encoding in self.tokenizer.encode_batch(dna)]

    def _embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed(ids, ids != self.pad_id)


class ProteinEmbedder(_Embedder):
    """ESM-2: <cls> residues <eos>, final layer, mean over residues."""

    pad_id = PAD_IDX
    warm_up_letters = "M"

    def __init__(
        self,
        model: Esm2 | GraphEmbedding,
        device: torch.device,
        token_budget: int = TOKEN_BUDGET,
        max_rows: int = MAX_ROWS,
        compiled: bool = False,
    ):
        super().__init__(model, device, token_budget, max_rows, compiled)
        if isinstance(model, GraphEmbedding):
            self.dim = model.dim
        else:
            self.dim = model.config.embed_dim
            self.packed = packable(device, model.embed_tokens.weight.dtype)

    def tokenize(self, sequences: Sequence[str]) -> list[list[int]]:
        return [encode_protein(s.upper()) for s in sequences]

    def _embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed(ids)

    def _embed_batch(self, tokens: list[list[int]], pinned: bool) -> torch.Tensor:
        if not self.packed:
            return super()._embed_batch(tokens, pinned)
        ids = torch.tensor([token for row in tokens for token in row])
        ids = (ids.pin_memory() if pinned else ids).to(self.device, non_blocking=pinned)
        packing = Packed.of([len(row) for row in tokens]).to(self.device, pinned)
        return self.model.embed_packed(ids, packing)


def check_dna(sequence: str, max_length: int = MAX_DNA_LENGTH) -> str | None:
    """Why a DNA sequence cannot be embedded, or None when it can."""
    if not sequence:
        return "empty sequence"
    if len(sequence) > max_length:
        return f"sequence of {len(sequence)} bases is longer than {max_length}"
    return _invalid_letter(sequence, DNA)


def check_protein(sequence: str, max_length: int = MAX_PROTEIN_LENGTH) -> str | None:
    if not sequence:
        return "empty sequence"
    if len(sequence) > max_length:
        return f"protein of {len(sequence)} residues is longer than {max_length}"
    return _invalid_letter(sequence, PROTEIN)


def _invalid_letter(sequence: str, alphabet: str) -> str | None:
    bad = first_invalid(sequence, alphabet)
    return f"{bad.group()!r} is not {EXPECTED[alphabet]}" if bad else None


# (sequence, max_length) -> why it cannot be embedded, or None.
CHECKS: dict[str, Callable[[str, int], str | None]] = {DNA: check_dna, PROTEIN: check_protein}
