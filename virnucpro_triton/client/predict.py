"""`virnucpro-triton predict`: stream a FASTA file through the served pipeline into result files.

Built on the library API (`classify.Classifier`): records are read one at a time and answered in
input order; results are written as they arrive. Memory does not grow with the sequence data:
the per-chunk verdicts, which VirNucPro's format sorts, spill to sorted temporary runs; only the
set of record ids (to keep duplicates apart) grows, by one short string per record.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from virnucpro_triton.client import journal as journals
from virnucpro_triton.client.classify import Classifier, SequenceResult
from virnucpro_triton.client.connection import MAX_MESSAGE_MB, RETRY_SECONDS, EndpointStats
from virnucpro_triton.client.outputs import (
    PREDICTIONS,
    SUMMARY,
    VERDICTS,
    ChunkVerdicts,
    atomic_files,
    prediction_row,
    score,
)
from virnucpro_triton.client.records import unique_ids
from virnucpro_triton.fasta import read_fasta
from virnucpro_triton.sequence import chunk_starts

SUMMARY_HEADER = "id\tlength\tchunks\tchunks_without_frame\tchunks_virus\tmax_p_virus\n"


@dataclass(frozen=True)
class RunSummary:
    records: int
    chunks: int
    frames: int
    chunks_virus: int
    chunks_without_frame: int
    out_dir: Path
    seconds: float = 0.0
    resumed_chunks: int = 0  # answered from the journal of an earlier, stopped run
    endpoints: tuple[EndpointStats, ...] = ()

    @property
    def retries(self) -> int:
        return sum(e.failed for e in self.endpoints)

    def describe(self) -> str:
        return (
            f"{self.records} records, {self.chunks} chunks, {self.frames} frames classified; "
            f"{self.chunks_virus} chunks called virus, {self.chunks_without_frame} chunks "
            "without a stop-free frame"
        )

    def report(self) -> str:
        """The run's final log: throughput, retries and what each server answered."""
        rate = self.frames / self.seconds if self.seconds else 0.0
        resumed = f", {self.resumed_chunks} chunks from the stopped run" * bool(self.resumed_chunks)
        lines = [
            self.describe(),
            f"{self.seconds:.1f} s, {rate:.1f} frames/s, {self.retries} requests retried{resumed}",
        ]
        lines += [
            f"  {e.url}: {e.answered} requests answered, {e.failed} failed attempts, "
            f"{e.outages} times out of rotation"
            for e in self.endpoints
        ]
        return "\n".join(lines)


@dataclass(frozen=True)
class SequenceCounts:
    """One row of sequence_summary.tsv."""

    chunks: int
    without_frame: int
    virus: int  # chunks VirNucPro calls viral
    max_p_virus: float | None  # None: no chunk kept a frame

    @classmethod
    def of(cls, result: SequenceResult) -> SequenceCounts:
        maxima = result.chunk_maxima()
        with_frame = maxima[~np.isnan(maxima[:, 0])]
        return cls(
            chunks=len(maxima),
            without_frame=len(maxima) - len(with_frame),
            virus=int((with_frame[:, 1] >= with_frame[:, 0]).sum()),
            max_p_virus=float(with_frame[:, 1].max()) if len(with_frame) else None,
        )

    def row(self, result: SequenceResult) -> str:
        best = "NA" if self.max_p_virus is None else score(self.max_p_virus)
        return (
            f"{result.id}\t{result.length}\t{self.chunks}\t{self.without_frame}\t"
            f"{self.virus}\t{best}\n"
        )


def _count_chunks(fasta: Path, chunk_size: int) -> int:
    return sum(len(chunk_starts(len(r.sequence), chunk_size)) for r in read_fasta(fasta))


def predict(
    fasta: Path,
    chunk_size: int,
    out_dir: Path,
    urls: str | Sequence[str],
    *,
    batch_chunks: int = 64,
    max_in_flight: int | None = None,
    progress: bool | None = None,
    retry_seconds: float = RETRY_SECONDS,
    max_message_mb: int = MAX_MESSAGE_MB,
    resume: bool = False,
) -> RunSummary:
    """Classify `fasta` into VirNucPro's result files in `out_dir`.

    Answers are journaled in `out_dir` as they come; `resume` continues a stopped run of the
    same input from its journal. The journal goes when the result files are complete.
    """
    if progress is None:
        progress = sys.stderr.isatty()
    started = time.monotonic()
    # Reading the whole input first reports bad input before any server work or output file
    # (a bad record at the end of a large file would waste the run), and sizes the progress bar.
    total = _count_chunks(fasta, chunk_size)
    classifier = Classifier(
        urls,
        chunk_size,
        batch_chunks=batch_chunks,
        max_in_flight=max_in_flight,
        retry_seconds=retry_seconds,
        max_message_mb=max_message_mb,
    )
    run = journals.fingerprint(fasta, chunk_size)
    journal = journals.Journal(out_dir / journals.NAME, run, resume=resume)
    resumed = journal.recorded
    counts = dict(records=0, chunks=0, frames=0, chunks_virus=0, chunks_without_frame=0)
    verdicts = ChunkVerdicts()

    def write(out, result: SequenceResult) -> None:
        for frame_id, p_others, p_virus in result.frames():
            out[PREDICTIONS].write(prediction_row(frame_id, p_others, p_virus))
            verdicts.add(frame_id, p_others, p_virus)
            counts["frames"] += 1
        sequence = SequenceCounts.of(result)
        out[SUMMARY].write(sequence.row(result))
        counts["records"] += 1
        counts["chunks"] += sequence.chunks
        counts["chunks_without_frame"] += sequence.without_frame
        counts["chunks_virus"] += sequence.virus

    async def run_all(out, bar) -> None:
        pairs = ((r.id, r.sequence) for r in unique_ids(read_fasta(fasta)))
        async for result in classifier.classify(pairs, journal=journal, on_batch=bar.update):
            write(out, result)

    with tqdm(total=total, unit="chunk", disable=not progress, desc="classifying") as bar:
        try:
            with atomic_files(out_dir, (PREDICTIONS, VERDICTS, SUMMARY)) as out:
                out[PREDICTIONS].write("Sequence_ID\tPrediction\tscore1\tscore2\n")
                out[SUMMARY].write(SUMMARY_HEADER)
                asyncio.run(run_all(out, bar))
                verdicts.write(out[VERDICTS])
        except BaseException:
            journal.close()  # kept: --resume goes on from it
            raise
        finally:
            classifier.close()
    journal.remove()
    return RunSummary(
        out_dir=out_dir,
        seconds=time.monotonic() - started,
        resumed_chunks=resumed,
        endpoints=tuple(classifier.stats),
        **counts,
    )
