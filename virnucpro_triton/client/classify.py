"""The library API: classify (id, sequence) pairs through the served pipeline, asynchronously.

    async with Classifier(["gpu1:8001", "gpu2:8001"], chunk_size=300) as classifier:
        async for result in classifier.classify(pairs):  # any iterable or async iterable
            print(result.id, result.chunk_verdicts())

Sequences are cut into chunks as VirNucPro does, chunks of consecutive sequences are sent in
batches with a bounded number of requests in flight (spread over the endpoints, retried while a
server is away), and one `SequenceResult` per input sequence comes back, in input order,
carrying the record it answers (records.py). The `predict` command is this plus the result files.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from virnucpro_triton.alphabet import first_invalid
from virnucpro_triton.client.access import PLAIN, Access
from virnucpro_triton.client.addresses import Resolver, system_resolver
from virnucpro_triton.client.connection import (
    MAX_MESSAGE_MB,
    RESOLVE_SECONDS,
    RETRY_SECONDS,
    ClientError,
    Connection,
    EndpointStats,
    as_async,
    in_order,
    text_column,
)
from virnucpro_triton.records import InputRecord, ResultBatch, SequenceResult
from virnucpro_triton.repository.spec import (
    CHUNK_SIZE,
    DNA_CHUNKS,
    FRAME_KEPT,
    FRAME_PROBABILITIES,
    PIPELINE,
)
from virnucpro_triton.sequence import chunk_starts

_EMPTY = (np.empty((0, 6, 2), np.float32), np.empty((0, 6), bool))
BATCH_CHUNKS = 64  # chunks per request, by default


class AnswerJournal(Protocol):
    """Where a run keeps the answers of its first chunks, in input order, so that a stopped run
    can go on (results/journal.py's Journal)."""

    recorded: int  # chunks whose answers it holds

    def take(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The next `n` recorded (probabilities, kept)."""

    def append(self, probabilities: np.ndarray, kept: np.ndarray) -> None:
        """Keep the answers of the next chunks."""


def _result_batch(
    closes: list[tuple[InputRecord, int]], probabilities: np.ndarray, kept: np.ndarray
) -> ResultBatch:
    maxima = _maxima(probabilities, kept)
    results, row = [], 0
    for record, chunks in closes:
        rows = slice(row, row + chunks)
        results.append(SequenceResult(record, probabilities[rows], kept[rows], maxima[rows]))
        row += chunks
    return ResultBatch(results, probabilities, kept, maxima)


def _maxima(probabilities: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """[n, 2] max P(others), max P(virus) over each row's kept frames; NaN where none."""
    best = np.full((len(kept), 2), np.nan, np.float32)
    has_frame = kept.any(axis=1)
    best[has_frame] = np.where(kept[:, :, None], probabilities, -np.inf)[has_frame].max(axis=1)
    return best


@dataclass
class _Batch:
    chunks: list[str] = field(default_factory=list)
    # (record, chunks) of the records complete after this batch
    closes: list[tuple[InputRecord, int]] = field(default_factory=list)
    from_journal: bool = False


class Classifier:
    """Async client of the `virnucpro` pipeline on one or more Triton servers."""

    def __init__(
        self,
        urls: str | Sequence[str],
        chunk_size: int,
        *,
        batch_chunks: int = BATCH_CHUNKS,
        max_in_flight: int | None = None,
        retry_seconds: float = RETRY_SECONDS,
        max_message_mb: int = MAX_MESSAGE_MB,
        resolve: Resolver = system_resolver,
        resolve_seconds: float = RESOLVE_SECONDS,
        access: Access = PLAIN,
    ):
        """`urls`: HOST:PORT addresses; a name stands for every address it resolves to, and is
        resolved again every `resolve_seconds` (`resolve` turns a name into its addresses).
        `access`: the token and TLS files the servers ask for (`Access.from_environment()`
        takes those the environment names).
        `max_in_flight`: default 4 per server, following the servers as they come and go.
        `chunk_size`: one the servers have a classifier for (they name theirs if not)."""
        if chunk_size < 1:
            raise ClientError(f"chunk size must be a positive number of bases, not {chunk_size}")
        self.chunk_size = chunk_size
        self.batch_chunks = batch_chunks
        self.connection = Connection(
            urls,
            PIPELINE,
            retry_seconds=retry_seconds,
            max_message_mb=max_message_mb,
            resolve=resolve,
            resolve_seconds=resolve_seconds,
            access=access,
        )
        self._max_in_flight = max_in_flight

    @property
    def max_in_flight(self) -> int:
        """Requests awaiting an answer at most, now."""
        return self._max_in_flight or self.connection.default_in_flight

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
        min_length: int = 0,
        journal: AnswerJournal | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> AsyncIterator[SequenceResult]:
        """One result per (id, sequence), in input order, each carrying its record.

        A sequence shorter than `min_length` is not sent: its result has no chunks. With a
        `journal`, the chunks it already holds are answered from it and every new answer is
        added to it, so that a run stopped at any point can go on where it stopped.
        `on_batch(chunks)` is called as each batch is answered, for progress bars.
        """
        batches = self.classify_batches(
            sequences, min_length=min_length, journal=journal, on_batch=on_batch
        )
        async for batch in batches:
            for result in batch.results:
                yield result

    async def classify_batches(
        self,
        sequences: Iterable[tuple[str, str]] | AsyncIterable[tuple[str, str]],
        *,
        min_length: int = 0,
        journal: AnswerJournal | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> AsyncIterator[ResultBatch]:
        """`classify`'s results, grouped by the request that completed them."""
        batches = self._batches(sequences, min_length, journal.recorded if journal else 0)
        jobs = ((batch, self._request(batch)) async for batch in batches)
        waiting = [_EMPTY]  # answers of the chunks of sequences not complete yet
        async for batch, answer in in_order(jobs, lambda: self.max_in_flight):
            if batch.from_journal:
                waiting.append(journal.take(len(batch.chunks)))
            elif batch.chunks:
                waiting.append((answer[FRAME_PROBABILITIES.name], answer[FRAME_KEPT.name]))
                if journal:
                    journal.append(*waiting[-1])
            if batch.closes:
                # One copy per batch, or one per long sequence: never one per chunk or record.
                probabilities, kept = (np.concatenate(a) for a in zip(*waiting))
                done = sum(chunks for _, chunks in batch.closes)
                waiting = [_EMPTY, (probabilities[done:], kept[done:])]
                yield _result_batch(batch.closes, probabilities[:done], kept[:done])
            if on_batch:
                on_batch(len(batch.chunks))

    async def _batches(self, sequences, min_length: int, journaled: int) -> AsyncIterator[_Batch]:
        """Batches of consecutive chunks; a batch never straddles the end of the journal."""
        batch, position, size = _Batch(), 0, self.chunk_size
        async for index, (name, sequence) in _enumerate(sequences):
            sent = len(sequence) >= min_length
            bad = sent and first_invalid(sequence)
            if bad:
                message = f"sequence {index} ({name!r}): {bad[0]!r} is not a nucleotide code"
                raise ClientError(message)
            starts = chunk_starts(len(sequence), size) if sent else []
            for start in starts:
                batch.chunks.append(sequence[start : start + size])
                position += 1
                if len(batch.chunks) == self.batch_chunks or position == journaled:
                    batch.from_journal = position <= journaled
                    yield batch
                    batch = _Batch()
            batch.closes.append((InputRecord(index, name, sequence), len(starts)))
        if batch.chunks or batch.closes:
            yield batch

    def _request(self, batch: _Batch):
        if batch.from_journal or not batch.chunks:
            return None
        sizes = np.full((len(batch.chunks), 1), self.chunk_size, np.int32)
        inputs = {DNA_CHUNKS.name: text_column(batch.chunks), CHUNK_SIZE.name: sizes}
        outputs = [FRAME_PROBABILITIES.name, FRAME_KEPT.name]
        return lambda: self.connection.submit(inputs, outputs)


async def _enumerate(items):
    index = 0
    async for item in as_async(items):
        yield index, item
        index += 1
