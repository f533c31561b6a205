"""`virnucpro-triton predict`: stream a FASTA file through the served pipeline.

Records are read one at a time, cut into chunks and sent in batches with a bounded number of
requests in flight; results are consumed in input order and written as they arrive. Memory
does not grow with the sequence data: the per-chunk verdicts, which VirNucPro's format sorts,
spill to sorted temporary runs; only the set of record ids (to keep duplicates apart) grows,
by one short string per record.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from tqdm import tqdm

from virnucpro_triton.client import frame_table, run_info
from virnucpro_triton.client.connection import (
    RETRY_SECONDS,
    ClientError,
    Connection,
    in_order,
    text_column,
)
from virnucpro_triton.client.evidence import (
    COLUMNS,
    DEFAULT_THRESHOLDS,
    VERDICT_NAMES,
    Evidence,
    Thresholds,
)
from virnucpro_triton.client.frame_table import FrameRow, FrameTable
from virnucpro_triton.client.outputs import SUMMARY, VERDICTS, ChunkVerdicts, atomic_files, score
from virnucpro_triton.client.records import InputRecord, unique_ids
from virnucpro_triton.fasta import read_fasta
from virnucpro_triton.repository import CHUNK_SIZES, PIPELINE
from virnucpro_triton.sequence import FRAME_NAMES, chunk_starts, chunks

SUMMARY_COLUMNS = ("id", "length", "chunks", "chunks_without_frame", "chunks_virus", "max_p_virus")
SUMMARY_HEADER = "\t".join((*SUMMARY_COLUMNS, *COLUMNS)) + "\n"


@dataclass
class _RecordState:
    record: InputRecord
    chunks: int
    done: int = 0
    without_frame: int = 0
    virus: int = 0
    max_p_virus: float = float("-inf")
    evidence: Evidence = field(default_factory=Evidence)

    def summary_row(self, thresholds: Thresholds) -> str:
        best = score(self.max_p_virus) if self.max_p_virus >= 0 else "NA"
        return (
            f"{self.record.id}\t{len(self.record.sequence)}\t{self.chunks}\t"
            f"{self.without_frame}\t{self.virus}\t{best}\t{self.evidence.columns(thresholds)}\n"
        )


@dataclass
class _Batch:
    entries: list[tuple[_RecordState, str | None]] = field(default_factory=list)  # chunk id
    sequences: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RunSummary:
    records: int
    chunks: int
    frames: int
    chunks_virus: int
    chunks_without_frame: int
    out_dir: Path
    verdicts: dict[str, int] = field(default_factory=dict)  # sequences per weighted verdict

    def describe(self) -> str:
        sequences = ", ".join(f"{n} {verdict}" for verdict, n in self.verdicts.items())
        return (
            f"{self.records} records, {self.chunks} chunks, {self.frames} frames classified; "
            f"{self.chunks_virus} chunks called virus, {self.chunks_without_frame} chunks "
            f"without a stop-free frame; sequences: {sequences}"
        )


def _batches(
    records: Iterator[InputRecord], chunk_size: int, batch_chunks: int
) -> Iterator[_Batch]:
    batch = _Batch()
    for record in records:
        state = _RecordState(record, len(chunk_starts(len(record.sequence), chunk_size)))
        if state.chunks == 0:  # empty sequence: no request, but a summary row in its place
            batch.entries.append((state, None))
        for chunk_id, chunk in chunks(record.id, record.sequence, chunk_size):
            batch.entries.append((state, chunk_id))
            batch.sequences.append(chunk)
            if len(batch.sequences) == batch_chunks:
                yield batch
                batch = _Batch()
    if batch.entries:
        yield batch


def _count_chunks(fasta: Path, chunk_size: int) -> int:
    return sum(len(chunk_starts(len(r.sequence), chunk_size)) for r in read_fasta(fasta))


def predict(
    fasta: Path,
    chunk_size: int,
    out_dir: Path,
    url: str,
    *,
    batch_chunks: int = 64,
    max_in_flight: int = 4,
    progress: bool | None = None,
    retry_seconds: float = RETRY_SECONDS,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    frame_format: str = "tsv",
) -> RunSummary:
    """`frame_format` (tsv, parquet, jsonl) is that of the per-frame table; `thresholds` those
    of the weighted verdicts in sequence_summary.tsv."""
    if chunk_size not in CHUNK_SIZES:
        raise ClientError(f"chunk size must be one of {CHUNK_SIZES}, not {chunk_size}")
    if frame_format not in frame_table.FORMATS:
        raise ClientError(f"format must be one of {frame_table.FORMATS}, not {frame_format}")
    started, start = datetime.now(timezone.utc).isoformat(timespec="seconds"), time.monotonic()
    if progress is None:
        progress = sys.stderr.isatty()
    # Reading the whole input first reports bad input before any server work or output file
    # (a bad record at the end of a large file would waste the run), and sizes the progress bar.
    total = _count_chunks(fasta, chunk_size)
    connection = Connection(url, PIPELINE, retry_seconds=retry_seconds)
    verdicts = ChunkVerdicts()
    counts = dict(records=0, chunks=0, frames=0, chunks_virus=0, chunks_without_frame=0)
    sequence_verdicts = dict.fromkeys(VERDICT_NAMES, 0)

    def request(batch: _Batch):
        if not batch.sequences:  # only records without chunks: nothing to ask the server
            return None
        sizes = np.full((len(batch.sequences), 1), chunk_size, np.int32)
        inputs = {"DNA": text_column(batch.sequences), "CHUNK_SIZE": sizes}
        return lambda: connection.submit(inputs, ["PROBABILITIES", "FRAME_KEPT"])

    def write(out, table: FrameTable, batch: _Batch, result) -> None:
        row = 0
        for state, chunk_id in batch.entries:
            if chunk_id is not None:
                best = [-1.0, -1.0]
                for f, name in enumerate(FRAME_NAMES):
                    if result["FRAME_KEPT"][row, f]:
                        p_others, p_virus = (float(p) for p in result["PROBABILITIES"][row, f])
                        table.write(FrameRow(state.record.id, chunk_id, name, p_others, p_virus))
                        verdicts.add(chunk_id + name, p_others, p_virus)
                        best = [max(best[0], p_others), max(best[1], p_virus)]
                        counts["frames"] += 1
                state.done += 1
                row += 1
                if best[0] < 0:
                    state.without_frame += 1
                elif best[1] >= best[0]:
                    state.virus += 1
                if best[0] >= 0:
                    state.evidence.add(*best)
                state.max_p_virus = max(state.max_p_virus, best[1])
            if state.done == state.chunks:
                out[SUMMARY].write(state.summary_row(thresholds))
                sequence_verdicts[state.evidence.verdict(thresholds)] += 1
                counts["records"] += 1
                counts["chunks"] += state.chunks
                counts["chunks_virus"] += state.virus
                counts["chunks_without_frame"] += state.without_frame

    settings = dict(
        input=str(fasta),
        chunk_size=chunk_size,
        url=url,
        batch_chunks=batch_chunks,
        max_in_flight=max_in_flight,
        retry_seconds=retry_seconds,
        format=frame_format,
        viral_above=thresholds.viral_above,
        nonviral_below=thresholds.nonviral_below,
        min_chunks=thresholds.min_chunks,
    )
    frames_file = frame_table.FILES[frame_format]
    names = (frames_file, VERDICTS, SUMMARY, run_info.RUN_INFO)
    batches = _batches(unique_ids(read_fasta(fasta)), chunk_size, batch_chunks)
    with tqdm(total=total, unit="chunk", disable=not progress, desc="classifying") as bar:
        try:
            with (
                atomic_files(out_dir, names, binary=frame_table.BINARY) as out,
                FrameTable(frame_format, out[frames_file]) as table,
            ):
                out[SUMMARY].write(SUMMARY_HEADER)
                for batch, result in in_order(((b, request(b)) for b in batches), max_in_flight):
                    write(out, table, batch, result)
                    bar.update(len(batch.sequences))
                verdicts.write(out[VERDICTS])
                run_info.write(
                    out[run_info.RUN_INFO],
                    settings=settings,
                    counts={**counts, "verdicts": sequence_verdicts},
                    started=started,
                    seconds=time.monotonic() - start,
                )
        finally:
            connection.close()
    return RunSummary(out_dir=out_dir, verdicts=sequence_verdicts, **counts)
