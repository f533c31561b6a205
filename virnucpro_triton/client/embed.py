"""Pooled DNABERT-S or ESM-2 embeddings of records, from one or more Triton servers.

    embedder = Embedder(["gpu1:8001"], "dnabert_s")
    async for ids, vectors in embedder.embed(records):  # records: .id, .sequence
        ...  # vectors [len(ids), dim] float32, in input order

Records go in requests of `batch_size`, with a bounded number in flight (spread over the
endpoints, retried while a server is away); the answers come back in input order. The `embed`
command (commands/embed.py) is this plus the .npy and its ids.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence

import numpy as np

from virnucpro_triton.client.access import PLAIN, Access
from virnucpro_triton.client.connection import (
    MAX_MESSAGE_MB,
    RESOLVE_SECONDS,
    RETRY_SECONDS,
    Connection,
    in_order,
    text_column,
)
from virnucpro_triton.records import InputRecord
from virnucpro_triton.repository.spec import EMBEDDING, SEQUENCE


class Embedder:
    """Async client of an embedding entry (`dnabert_s`, `esm2`) on one or more Triton servers."""

    def __init__(
        self,
        urls: str | Sequence[str],
        model: str,
        *,
        batch_size: int = 32,
        max_in_flight: int | None = None,
        retry_seconds: float = RETRY_SECONDS,
        resolve_seconds: float = RESOLVE_SECONDS,
        max_message_mb: int = MAX_MESSAGE_MB,
        access: Access = PLAIN,
    ):
        """`max_in_flight`: default 4 per server, following the servers as they come and go;
        `access`: the token and TLS files the servers ask for."""
        self.batch_size = batch_size
        self.connection = Connection(
            urls,
            model,
            retry_seconds=retry_seconds,
            resolve_seconds=resolve_seconds,
            max_message_mb=max_message_mb,
            access=access,
        )
        self._max_in_flight = max_in_flight

    def close(self) -> None:
        self.connection.close()

    async def embed(
        self, records: Iterable[InputRecord]
    ) -> AsyncIterator[tuple[list[str], np.ndarray]]:
        """(ids, [len(ids), dim] little-endian float32 vectors) of each request, in input order."""
        in_flight = self._max_in_flight or (lambda: self.connection.default_in_flight)
        async for ids, result in in_order(self._jobs(records), in_flight):
            yield ids, np.ascontiguousarray(result[EMBEDDING.name], "<f4")

    def _jobs(self, records: Iterable[InputRecord]):
        ids: list[str] = []
        sequences: list[str] = []
        for record in records:
            ids.append(record.id)
            sequences.append(record.sequence.upper())
            if len(ids) == self.batch_size:
                yield ids, self._request(sequences)
                ids, sequences = [], []
        if ids:
            yield ids, self._request(sequences)

    def _request(self, sequences: list[str]):
        inputs = {SEQUENCE.name: text_column(sequences)}
        return lambda: self.connection.submit(inputs, [EMBEDDING.name])
