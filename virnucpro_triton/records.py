"""Input records as the client processes them (unique ids), and the pipeline's answers to them.

An answer carries the record it answers, so that whoever writes results from answers needs
nothing else: no record is paired with its answer by order.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from virnucpro_triton.fasta import Record
from virnucpro_triton.sequence import FRAME_NAMES, chunk_id


@dataclass(frozen=True)
class InputRecord:
    index: int  # position in the input, from 0
    id: str  # unique within the run (see unique_ids)
    sequence: str  # its letters as given (case kept)


def unique_ids(records: Iterable[Record]) -> Iterator[InputRecord]:
    """Give every record an id of its own.

    Paired-end mates and other duplicates must not be merged or overwrite each other: the
    n-th record carrying an id already used is renamed `{id}#n` (n = 2, 3, ...; skipping
    names that are taken), and the new id is what every output file shows.
    """
    seen: dict[str, int] = {}
    for index, record in enumerate(records):
        name = record.id
        if name in seen:
            n = seen[name]
            while f"{record.id}#{n}" in seen:
                n += 1
            seen[record.id] = n + 1
            name = f"{record.id}#{n}"
        seen[name] = 2
        yield InputRecord(index, name, record.sequence)


@dataclass(frozen=True)
class SequenceResult:
    """The pipeline's answer for one input record, chunk by chunk."""

    record: InputRecord  # the record answered
    probabilities: np.ndarray  # [chunks, 6, 2] float32: P(others), P(virus) per frame; NaN dropped
    kept: np.ndarray  # [chunks, 6] bool: frame had no stop codon and was classified
    maxima: np.ndarray  # [chunks, 2] float32: max P(others), max P(virus) over kept frames; NaN

    @property
    def index(self) -> int:
        return self.record.index

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def length(self) -> int:
        return len(self.record.sequence)

    @property
    def chunk_ids(self) -> list[str]:
        return [chunk_id(self.id, j) for j in range(1, len(self.kept) + 1)]

    def frames(self) -> Iterable[tuple[str, str, float, float]]:
        """(chunk id, frame name, P(others), P(virus)) of every kept frame, in VirNucPro's
        order; the frame's id is chunk id + frame name."""
        # Python lists: per-element numpy access costs more than the rest of the client.
        rows = zip(self.chunk_ids, self.kept.tolist(), self.probabilities.tolist())
        for chunk, kept, probabilities in rows:
            for name, keep, (p_others, p_virus) in zip(FRAME_NAMES, kept, probabilities):
                if keep:
                    yield chunk, name, p_others, p_virus

    def chunk_verdicts(self) -> list[bool | None]:
        """VirNucPro's rule per chunk: viral when max P(virus) >= max P(others); None: no frame."""
        return [None if o != o else v >= o for o, v in self.maxima.tolist()]  # NaN != NaN


@dataclass(frozen=True)
class ResultBatch:
    """The records that one answered request completed, with the arrays of all their chunks
    in one piece (each result's arrays are views of these), for work over many at once."""

    results: list[SequenceResult]
    probabilities: np.ndarray  # [chunks, 6, 2], the results' chunks in order
    kept: np.ndarray  # [chunks, 6]
    maxima: np.ndarray  # [chunks, 2]
