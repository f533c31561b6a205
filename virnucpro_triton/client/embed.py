"""`virnucpro-triton embed`: pooled DNABERT-S or ESM-2 embeddings of every FASTA record.

Rows of the .npy follow the input order; the record ids go beside it (`OUT.ids.txt`, one per
line, duplicates renamed as in `predict`). Both files appear only when the run succeeds.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from virnucpro_triton.client.connection import (
    MAX_MESSAGE_MB,
    RESOLVE_SECONDS,
    RETRY_SECONDS,
    Connection,
    in_order,
    text_column,
)
from virnucpro_triton.client.records import unique_ids
from virnucpro_triton.fasta import read_fasta
from virnucpro_triton.repository import DNABERT_S, ESM2

ALPHABET = {DNABERT_S: "dna", ESM2: "protein"}


def ids_path(out: Path) -> Path:
    return out.with_suffix(".ids.txt")


def embed(
    fasta: Path,
    model: str,
    out: Path,
    urls: str | Sequence[str],
    *,
    batch_size: int = 32,
    max_in_flight: int | None = None,
    retry_seconds: float = RETRY_SECONDS,
    resolve_seconds: float = RESOLVE_SECONDS,
    max_message_mb: int = MAX_MESSAGE_MB,
) -> tuple[int, int]:
    """Write the embeddings; return (records, dimension)."""
    alphabet = ALPHABET[model]
    count = sum(1 for _ in read_fasta(fasta, alphabet))  # sizes the .npy and checks the input
    connection = Connection(
        urls,
        model,
        retry_seconds=retry_seconds,
        resolve_seconds=resolve_seconds,
        max_message_mb=max_message_mb,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    partial_ids = ids_path(partial)
    matrix = None

    async def write_all(id_file) -> np.ndarray:
        nonlocal matrix
        row = 0
        jobs = _jobs(unique_ids(read_fasta(fasta, alphabet)), batch_size, connection)
        in_flight = max_in_flight or (lambda: connection.default_in_flight)  # 4 per server
        async for ids, result in in_order(jobs, in_flight):
            vectors = result["EMBEDDING"]
            if matrix is None:
                matrix = np.lib.format.open_memmap(
                    partial, mode="w+", dtype=np.float32, shape=(count, vectors.shape[1])
                )
            matrix[row : row + len(ids)] = vectors
            row += len(ids)
            id_file.writelines(f"{i}\n" for i in ids)
        return vectors

    try:
        with open(partial_ids, "w") as id_file:
            vectors = asyncio.run(write_all(id_file))
        matrix.flush()
        os.replace(partial, out)
        os.replace(partial_ids, ids_path(out))
    finally:
        del matrix
        partial.unlink(missing_ok=True)
        partial_ids.unlink(missing_ok=True)
        connection.close()
    return count, vectors.shape[1]


def _jobs(records, batch_size: int, connection: Connection):
    ids: list[str] = []
    sequences: list[str] = []
    for record in records:
        ids.append(record.id)
        sequences.append(record.sequence.upper())
        if len(ids) == batch_size:
            yield ids, _request(connection, sequences)
            ids, sequences = [], []
    if ids:
        yield ids, _request(connection, sequences)


def _request(connection: Connection, sequences: list[str]):
    inputs = {"SEQUENCE": text_column(sequences)}
    return lambda: connection.submit(inputs, ["EMBEDDING"])
