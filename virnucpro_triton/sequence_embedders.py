"""Sequences in, pooled embeddings out: tokenization plus length-bucketed batches, over a backend.

Used by the served `dnabert_s` and `esm2` models and by export's verification. Sequences are
sorted by length and grouped into batches under a token budget, so padding stays small; the
models mask padding out of attention and pooling. A backend that takes packed batches (ESM-2 in
half precision on a GPU: models/esm2.py `Packed`) gets them without padding; the budget then
counts real tokens.

Masking keeps a row's result equal to its result alone only up to its last bits: kernels pick
their tiling and reduction order by the batch's shape. Batch-invariant embedders
(repository/spec.py BATCH_INVARIANT) therefore run every batch in a shape that its rows alone
decide (`_invariant_batches`), padded even where the backend could pack.

Where the model runs (torch, or an ONNX graph elsewhere) is the backend's business
(backends/); tokenization and batching are the same for all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from virnucpro_triton.alphabet import DNA, EXPECTED, PROTEIN, as_dna, first_invalid
from virnucpro_triton.backends.base import Backend
from virnucpro_triton.models.esm2 import PAD_IDX, Packed, encode_protein, pad_batch
from virnucpro_triton.repository.spec import (
    INVARIANT_WIDTH_STEP,
    MAX_DNA_LENGTH,
    MAX_PROTEIN_LENGTH,
    MAX_ROWS,
    TOKEN_BUDGET,
)


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


def _invariant_batches(
    lengths: Sequence[int], token_budget: int, max_rows: int
) -> list[tuple[list[int], tuple[int, int]]]:
    """Batches (indices, (rows, width)) in which a sequence's batch shape depends on that sequence
    alone: its width is its own length rounded up to INVARIANT_WIDTH_STEP, and every batch of a
    width has as many rows as the budget allows at that width (filled up by the caller)."""
    by_width: dict[int, list[int]] = {}
    for index in sorted(range(len(lengths)), key=lengths.__getitem__):
        width = -(-lengths[index] // INVARIANT_WIDTH_STEP) * INVARIANT_WIDTH_STEP
        by_width.setdefault(width, []).append(index)
    batches = []
    for width, indices in by_width.items():
        rows = max(1, min(max_rows, token_budget // width))
        batches += [(indices[i : i + rows], (rows, width)) for i in range(0, len(indices), rows)]
    return batches


class _Embedder:
    """Shared batching loop; subclasses turn text into token ids."""

    pad_id: int
    warm_up_letters: str  # what synthetic sequences for warm_up() are made of

    def __init__(
        self,
        backend: Backend,
        token_budget: int = TOKEN_BUDGET,
        max_rows: int = MAX_ROWS,
        batch_invariant: bool = False,
    ):
        self.backend = backend
        self.dim = backend.dim
        self.token_budget = token_budget
        self.max_rows = max_rows
        self.batch_invariant = batch_invariant

    def warm_up(self) -> None:
        """Compile, on batches of assorted shapes, before requests wait for it."""
        for lengths in ([10, 60, 170], [170, 170]):
            self([self.warm_up_letters * n for n in lengths])

    def tokenize(self, sequences: Sequence[str]) -> list[list[int]]:
        raise NotImplementedError

    def batches(self, lengths: Sequence[int]) -> list[tuple[list[int], tuple[int, int] | None]]:
        """The batches (indices, shape for `_embed_batch`) that sequences of `lengths` tokens
        are embedded in."""
        if self.batch_invariant:
            return _invariant_batches(lengths, self.token_budget, self.max_rows)
        padded = not self.backend.packed
        return [(b, None) for b in _batches(lengths, self.token_budget, self.max_rows, padded)]

    def _embed_batch(
        self, tokens: list[list[int]], pinned: bool, shape: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """One batch's vectors [B, dim] (fp32), queued on the backend's device. `shape` (rows,
        width): run padded in exactly that shape, the rows filled up with copies of the first."""
        device = self.backend.device
        count, width = len(tokens), 0
        if shape:
            rows, width = shape
            tokens = tokens + tokens[:1] * (rows - count)
        elif self.backend.packed:
            ids = torch.tensor([token for row in tokens for token in row])
            ids = (ids.pin_memory() if pinned else ids).to(device, non_blocking=pinned)
            packing = Packed.of([len(row) for row in tokens]).to(device, pinned)
            return self.backend.embed_packed(ids, packing)
        ids = pad_batch(tokens, self.pad_id, width)
        ids = (ids.pin_memory() if pinned else ids).to(device, non_blocking=pinned)
        return self.backend.embed(ids, ids != self.pad_id)[:count]

    @torch.inference_mode()
    def __call__(self, sequences: Sequence[str]) -> np.ndarray:
        out = np.empty((len(sequences), self.dim), dtype=np.float32)
        if not sequences:
            return out
        tokens = self.tokenize(sequences)
        shaped = self.batches([len(t) for t in tokens])
        # Every batch is queued on the device before any result comes back, so the CPU pads
        # the next batch while the GPU computes this one; one copy back at the end.
        pinned = self.backend.device.type == "cuda"
        vectors = [
            self._embed_batch([tokens[i] for i in batch], pinned, shape) for batch, shape in shaped
        ]
        out[np.concatenate([batch for batch, _ in shaped])] = torch.cat(vectors).cpu().numpy()
        return out


class DnaEmbedder(_Embedder):
    """DNABERT-S: BPE tokens wrapped in [CLS] ... [SEP], mean over all real tokens."""

    warm_up_letters = "ACGTTGCA"

    def __init__(
        self,
        backend: Backend,
        tokenizer_path: Path,
        token_budget: int = TOKEN_BUDGET,
        max_rows: int = MAX_ROWS,
        batch_invariant: bool = False,
    ):
        super().__init__(backend, token_budget, max_rows, batch_invariant)
        self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        pad = self.tokenizer.token_to_id("[PAD]")
        if pad is None:
            raise ValueError(f"{tokenizer_path}: the tokenizer has no [PAD] token")
        self.pad_id = pad

    def tokenize(self, sequences: Sequence[str]) -> list[list[int]]:
        dna = [as_dna(s) for s in sequences]  # RNA is embedded as the same DNA
        return [encoding.ids for encoding in self.tokenizer.encode_batch(dna)]


class ProteinEmbedder(_Embedder):
    """ESM-2: <cls> residues <eos>, final layer, mean over residues."""

    pad_id = PAD_IDX
    warm_up_letters = "M"

    def tokenize(self, sequences: Sequence[str]) -> list[list[int]]:
        return [encode_protein(s.upper()) for s in sequences]


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
