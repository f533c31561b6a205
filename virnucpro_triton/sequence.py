"""VirNucPro's sequence logic: chunking, six-frame translation and the frame filter.

One implementation shared by the client (chunking, `preprocess`), the server pipeline model
(translation and filtering) and the tests. It reproduces the original tool exactly, quirks
included, because the classifier was trained on its output.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from virnucpro_triton.alphabet import as_dna

FRAME_NAMES = ("F1", "F2", "F3", "R1", "R2", "R3")
_CHUNK = "_chunk_"  # chunk ids are `{record id}_chunk_{j}`, j from 1

_BASES = "TCAG"
_AMINO = "FFLLSSSSYY**CC*WLLLLPPPPHHQQRRRRIIIMTTTTNNKKSSRRVVVVAAAADDEEGGGG"
# Standard genetic code (NCBI table 1). A codon outside these 64 (N, IUPAC codes, ...) is
# dropped by the original tool instead of becoming X.
CODON_TABLE = {
    a + b + c: _AMINO[16 * i + 4 * j + k]
    for i, a in enumerate(_BASES)
    for j, b in enumerate(_BASES)
    for k, c in enumerate(_BASES)
}
# Only A<->T and C<->G are swapped; any other letter is kept as it is.
_COMPLEMENT = str.maketrans("ACGTacgt", "TGCAtgca")


@dataclass(frozen=True)
class Frame:
    """A reading frame that passed the filter: what DNABERT-S and ESM-2 see."""

    name: str  # F1..F3, R1..R3
    nucleotide: str
    protein: str


def chunk_starts(length: int, chunk_size: int) -> list[int]:
    """Start offsets of the chunks of a sequence, as VirNucPro's `split_fasta_chunk` places them.

    The n = ceil(L/C) chunks overlap evenly so that the last one ends at the sequence end (it
    can still be shorter than C: the original's shift list is used as it is).
    """
    if length <= 0:
        return []
    if length <= chunk_size:  # most reads: one chunk, without the general arithmetic
        return [0]
    n = math.ceil(length / chunk_size)
    repeat = n * chunk_size - length
    lower = repeat // n
    n_upper = repeat - lower * (n - 1)
    # Negative repeat counts give empty runs, exactly like Python list repetition.
    shifts = ([lower + 1] * n_upper + [lower] * (n - 1 - n_upper) + [0])[:n]
    starts, moved = [], 0
    for j in range(n):
        starts.append(j * chunk_size - moved)
        moved += shifts[j]
    return starts


def chunk_id(record_id: str, number: int) -> str:
    """The id of a record's chunk `number` (from 1), as VirNucPro names it."""
    return f"{record_id}{_CHUNK}{number}"


def split_chunk_id(chunk_id: str) -> tuple[str, int]:
    """(record id, chunk number) of a chunk id; the record id may hold `_chunk_` itself."""
    record_id, _, number = chunk_id.rpartition(_CHUNK)
    return record_id, int(number)


def chunks(record_id: str, sequence: str, chunk_size: int) -> Iterator[tuple[str, str]]:
    """(chunk id, chunk sequence) pairs of one record, in order."""
    for j, start in enumerate(chunk_starts(len(sequence), chunk_size), start=1):
        yield chunk_id(record_id, j), sequence[start : start + chunk_size]


def reverse_complement(sequence: str) -> str:
    return sequence.translate(_COMPLEMENT)[::-1]


def translate(sequence: str, offset: int) -> str:
    """Translate from `offset` codon by codon; codons that are not plain ACGT are dropped."""
    table = CODON_TABLE
    return "".join(table.get(sequence[i : i + 3], "") for i in range(offset, len(sequence) - 2, 3))


def six_frames(chunk: str) -> list[Frame | None]:
    """The six frames of a chunk in F1..F3, R1..R3 order; None where the filter drops a frame.

    A frame is kept when its protein is non-empty and stop-free. Its nucleotide is the
    original's slice `[k-1 : k + 3p]`, one base past the codons when that base exists.
    """
    upper = as_dna(chunk)
    strands = (upper, reverse_complement(upper))
    frames: list[Frame | None] = []
    for index, name in enumerate(FRAME_NAMES):
        strand = strands[index // 3]
        k = index % 3 + 1
        protein = translate(strand, k - 1)
        if protein and "*" not in protein:
            frames.append(Frame(name, strand[k - 1 : k + 3 * len(protein)], protein))
        else:
            frames.append(None)
    return frames
