"""The library API: classify (id, sequence) pairs through the served pipeline, asynchronously.

    async with Classifier(["gpu1:8001", "gpu2:8001"], chunk_size=300) as classifier:
        async for result in classifier.classify(pairs):  # any iterable or async iterable
            print(result.id, result.chunk_verdicts())

Sequences are cut into chunks as VirNucPro does, chunks of consecutive sequences are sent in
batches with a bounded number of requests in flight (spread over the endpoints, retried while a
server is away), and one `SequenceResult` per input sequence comes back, in input order. The
`predict` command is this plus the result files.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from virnucpro_triton.client.connection import (
    MAX_MESSAGE_MB,
    RETRY_SECONDS,
    ClientError,
    Connection,
    EndpointStats,
    as_async,
    in_order,
    text_column,
)
from virnucpro_triton.client.journal import Journal
from virnucpro_triton.repository import CHUNK_SIZES, PIPELINE
from virnucpro_triton.sequence import FRAME_NAMES, chunk_starts, first_invalid

IN_FLIGHT_PER_SERVER = 4


@dataclass(frozen=True)
class SequenceResult:
    """The pipeline's answer for one input sequence, chunk by chunk."""

    index: int  # position in the input, from 0
    id: str
    length: int
    probabilities: np.ndarray  # [chunks, 6, 2] float32: P(others), P(virus) per frame; NaN dropped
    kept: np.ndarray  # [chunks, 6] bool: frame had no stop codon and was classified
    maxima: np.ndarray  # [chunks, 2] float32: max P(others), max P(virus) over kept frames; NaN

    @property
    def chunk_ids(self) -> list[str]:
        return [f"{self.id}_chunk_{j}" for j in range(1, len(self.kept) + 1)]

    def frames(self) -> Iterable[tuple[str, str, float, float]]:
        """(chunk id, frame name, P(others), P(virus)) of every kept frame, in VirNucPro's
        order; the frame's id is chunk id + frame name."""
        # Python lists: per-element numpy access costs more than the rest of the client.
        rows = zip(self.chunk_ids, self.kept.tolist(), self.probabilities.tolist())
        for chunk_id, kept, probabilities in rows:
            for name, keep, (p_others, p_virus) in zip(FRAME_NAMES, kept, probabilities):
                if keep:
                    yield chunk_id, name, p_others, p_virus

    def chunk_verdicts(self) -> list[bool | None]:
        """VirNucPro's rule per chunk: viral when max P(virus) >= max P(others); None: no frame."""
        return [None if o != o else v >= o for o, v in self.maxima.tolist()]  # NaN != NaN


def _maxima(probabilities: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """[n, 2] max P(others), max P(virus) over each row's kept frames; NaN where none."""
    best = np.full((len(kept), 2), np.nan, np.float32)
    has_frame = kept.any(axis=1)
    best[has_frame] = np.where(kept[:, :, None], probabilities, -np.inf)[has_frame].max(axis=1)
    return best


@dataclass
class _Batch:
    # (sequence, its first chunk here, chunks here): the batch's rows, a run per sequence
    runs: list[list] = field(default_factory=list)
    chunks: list[str] = field(default_factory=list)
    closes: list[SequenceResult] = field(default_factory=list)  # complete after this batch
    from_journal: bool = False


class Classifier:
    """Async client of the `virnucpro` pipeline on one or more Triton servers."""

    def __init__(
        self,
        urls: str | Sequence[str],
        chunk_size: int,
        *,
        batch_chunks: int = 64,
        max_in_flight: int | None = None,
        retry_seconds: float = RETRY_SECONDS,
        max_message_mb: int = MAX_MESSAGE_MB,
    ):
        if chunk_size not in CHUNK_SIZES:
            raise ClientError(f"chunk size must be one of {CHUNK_SIZES}, not {chunk_size}")
        self.chunk_size = chunk_size
        self.batch_chunks = batch_chunks
        self.connection = Connection(
            urls, PIPELINE, retry_seconds=retry_seconds, max_message_mb=max_message_mb
        )
        self.max_in_flight = max_in_flight or IN_FLIGHT_PER_SERVER * len(self.connection.urls)

    @property
    def stats(self) -> list[EndpointStats]:
        return self.connection.stats

    def close(self) -> None:
        self.connection.close()

    async def __aenter__(self) -> Classifier:
        return self

    async def __aexit__(self, *exc) -> None:
        self.close()

    async def classify(
        self,
        sequences: Iterable[tuple[str, str]] | AsyncIterable[tuple[str, str]],
        *,
        journal: Journal | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> AsyncIterator[SequenceResult]:
        """One result per (id, sequence), in input order.

        With a `journal`, the chunks it already holds are answered from it and every new answer
        is added to it, so that a run stopped at any point can go on where it stopped.
        `on_batch(chunks)` is called as each batch is answered, for progress bars.
        """
        batches = self._batches(sequences, journal.recorded if journal else 0)
        jobs = ((batch, self._request(batch)) async for batch in batches)
        async for batch, answer in in_order(jobs, self.max_in_flight):
            if batch.from_journal:
                probabilities, kept = journal.take(len(batch.chunks))
            elif batch.chunks:
                probabilities, kept = answer["PROBABILITIES"], answer["FRAME_KEPT"]
                if journal:
                    journal.append(probabilities, kept)
            row = 0
            if batch.chunks:
                maxima = _maxima(probabilities, kept)
            for result, first, count in batch.runs:
                rows = slice(row, row + count)
                chunks = slice(first, first + count)
                result.probabilities[chunks] = probabilities[rows]
                result.kept[chunks] = kept[rows]
                result.maxima[chunks] = maxima[rows]
                row += count
            for result in batch.closes:
                yield result
            if on_batch:
                on_batch(len(batch.chunks))

    async def _batches(self, sequences, journaled: int) -> AsyncIterator[_Batch]:
        """Batches of consecutive chunks; a batch never straddles the end of the journal."""
        batch, position = _Batch(), 0
        async for index, (name, sequence) in _enumerate(sequences):
            bad = first_invalid(sequence)
            if bad:
                message = f"sequence {index} ({name!r}): {bad[0]!r} is not a nucleotide code"
                raise ClientError(message)
            starts = chunk_starts(len(sequence), self.chunk_size)
            result = SequenceResult(
                index,
                name,
                len(sequence),
                np.full((len(starts), 6, 2), np.nan, np.float32),
                np.zeros((len(starts), 6), bool),
                np.full((len(starts), 2), np.nan, np.float32),
            )
            for chunk, start in enumerate(starts):
                if batch.runs and batch.runs[-1][0] is result:
                    batch.runs[-1][2] += 1
                else:
                    batch.runs.append([result, chunk, 1])
                batch.chunks.append(sequence[start : start + self.chunk_size])
                position += 1
                if len(batch.chunks) == self.batch_chunks or position == journaled:
                    batch.from_journal = position <= journaled
                    yield batch
                    batch = _Batch()
            batch.closes.append(result)  # done when the batch holding its last chunk is
        if batch.runs or batch.closes:
            yield batch

    def _request(self, batch: _Batch):
        if batch.from_journal or not batch.chunks:
            return None
        sizes = np.full((len(batch.chunks), 1), self.chunk_size, np.int32)
        inputs = {"DNA": text_column(batch.chunks), "CHUNK_SIZE": sizes}
        return lambda: self.connection.submit(inputs, ["PROBABILITIES", "FRAME_KEPT"])


async def _enumerate(items):
    index = 0
    async for item in as_async(items):
        yield index, item
        index += 1
