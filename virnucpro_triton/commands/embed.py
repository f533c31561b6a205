"""`virnucpro-triton embed`: pooled DNABERT-S or ESM-2 embeddings of every FASTA/FASTQ record.

Rows of the .npy follow the input order; the record ids go beside it (`OUT.ids.txt`, one per
line, duplicates renamed as in `predict`). Both files appear only when the run succeeds. The
input is read once: rows are spooled as they come and the .npy is assembled at the end, when
its length is known.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from virnucpro_triton.alphabet import DNA, PROTEIN, nucleotides_only
from virnucpro_triton.client.access import PLAIN, Access
from virnucpro_triton.client.connection import MAX_MESSAGE_MB, RESOLVE_SECONDS, RETRY_SECONDS
from virnucpro_triton.client.embed import Embedder
from virnucpro_triton.commands.progress import InputProgress
from virnucpro_triton.fasta import Record, read_fasta
from virnucpro_triton.interrupt import run_interruptible
from virnucpro_triton.records import unique_ids
from virnucpro_triton.repository.spec import DNABERT_S, ESM2
from virnucpro_triton.results.outputs import atomic_files

ALPHABET = {DNABERT_S: DNA, ESM2: PROTEIN}
_log = logging.getLogger(__name__)


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
    progress: bool | None = None,
    access: Access = PLAIN,
) -> tuple[int, int]:
    """Write the embeddings; return (records, dimension). `access`: the token and TLS files
    the servers ask for."""
    dna_as_protein = _DnaAsProtein(model)
    embedder = Embedder(
        urls,
        model,
        batch_size=batch_size,
        max_in_flight=max_in_flight,
        retry_seconds=retry_seconds,
        resolve_seconds=resolve_seconds,
        max_message_mb=max_message_mb,
        access=access,
    )
    count, dim = 0, 0

    async def write_all(rows, id_file, bar: InputProgress) -> None:
        nonlocal count, dim
        records = dna_as_protein.watch(read_fasta(fasta, ALPHABET[model], on_read=bar.read))
        async for ids, vectors in embedder.embed(unique_ids(records)):
            rows.write(vectors.tobytes())
            count, dim = count + len(ids), vectors.shape[1]
            id_file.writelines(f"{i}\n" for i in ids)
            bar.answered()

    try:
        with (
            InputProgress(fasta, "embedding", progress) as bar,
            atomic_files(out.parent, (out.name, ids_path(out).name), binary={out.name}) as files,
            tempfile.TemporaryFile(dir=out.parent) as rows,
        ):
            run_interruptible(write_all(rows, files[ids_path(out).name], bar))
            matrix = files[out.name]
            header = {"descr": "<f4", "fortran_order": False, "shape": (count, dim)}
            np.lib.format.write_array_header_1_0(matrix, header)
            rows.seek(0)
            shutil.copyfileobj(rows, matrix)
    finally:
        embedder.close()
    dna_as_protein.warn()
    return count, dim


class _DnaAsProtein:
    """Records given to esm2 that hold nucleotide letters only: DNA embedded as protein by
    mistake, most likely; counted over the one pass, told once at the end."""

    def __init__(self, model: str):
        self.model = model
        self.count = 0
        self.first = ""

    def watch(self, records: Iterable[Record]) -> Iterator[Record]:
        for record in records:
            if self.model == ESM2 and nucleotides_only(record.sequence):
                self.count += 1
                self.first = self.first or record.id
            yield record

    def warn(self) -> None:
        if self.count:
            _log.warning(
                "warning: %d records hold only nucleotide letters (the first: %r); esm2 embeds "
                "them as protein, --model dnabert_s embeds DNA",
                self.count,
                self.first,
            )
