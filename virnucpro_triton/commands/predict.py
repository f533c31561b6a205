"""`virnucpro-triton predict`: stream a FASTA file through the served pipeline into result files.

The input is read once, front to back: its records go to the classifier (client/classify.py),
whose answers carry them to the result writer (results/writer.py) as they arrive, in input
order. Memory does not grow with the sequence data: the per-chunk verdicts, which VirNucPro's
format sorts, spill to sorted temporary runs; only the set of record ids (to keep duplicates
apart) grows, by one short string per record.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from virnucpro_triton.client import provenance
from virnucpro_triton.client.access import PLAIN, Access
from virnucpro_triton.client.classify import BATCH_CHUNKS, Classifier
from virnucpro_triton.client.connection import (
    MAX_MESSAGE_MB,
    RESOLVE_SECONDS,
    RETRY_SECONDS,
    EndpointStats,
)
from virnucpro_triton.commands.progress import InputProgress
from virnucpro_triton.errors import ClientError
from virnucpro_triton.fasta import is_stream, read_fasta
from virnucpro_triton.interrupt import run_interruptible
from virnucpro_triton.records import unique_ids
from virnucpro_triton.repository import pipeline_entries
from virnucpro_triton.results import frame_table, run_info
from virnucpro_triton.results import journal as journals
from virnucpro_triton.results.evidence import DEFAULT_THRESHOLDS, Thresholds
from virnucpro_triton.results.frame_table import FrameTable
from virnucpro_triton.results.outputs import SUMMARY, VERDICTS, VIRUSES, atomic_files, remove_stale
from virnucpro_triton.results.writer import RUN_FILES, ResultWriter


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
    verdicts: dict[str, int] = field(default_factory=dict)  # sequences per weighted verdict
    models: dict[str, dict[str, Any]] = field(default_factory=dict)  # provenance.models
    start_seconds: float | None = None  # of the embedded server, when one was started

    @property
    def retries(self) -> int:
        return sum(e.failed for e in self.endpoints)

    def describe(self) -> str:
        sequences = ", ".join(f"{n} {verdict}" for verdict, n in self.verdicts.items())
        return (
            f"{self.records} records, {self.chunks} chunks, {self.frames} frames classified; "
            f"{self.chunks_virus} chunks called virus, {self.chunks_without_frame} chunks "
            f"without a stop-free frame; sequences: {sequences}"
        )

    def report(self) -> str:
        """The run's final log: throughput, retries and what each server answered."""
        rate = self.frames / self.seconds if self.seconds else 0.0
        resumed = f", {self.resumed_chunks} chunks from the stopped run" * bool(self.resumed_chunks)
        start = "" if self.start_seconds is None else f" after a {self.start_seconds:.1f} s start"
        lines = [
            self.describe(),
            f"{self.seconds:.1f} s{start}, {rate:.1f} frames/s, {self.retries} requests retried"
            f"{resumed}",
        ]
        lines += [
            f"  {e.url}: {e.answered} requests answered, {e.failed} failed attempts, "
            f"{e.outages} times out of rotation"
            for e in self.endpoints
        ]
        lines += ["models:"] * bool(self.models)
        lines += [f"  {name}: {run_info.describe(about)}" for name, about in self.models.items()]
        if random := run_info.random_weights(self.models):
            names = ", ".join(random)
            lines.append(f"WARNING: {names} have RANDOM weights: the verdicts are meaningless")
        return "\n".join(lines)


def predict(
    fasta: Path,
    chunk_size: int,
    out_dir: Path,
    urls: str | Sequence[str],
    *,
    batch_chunks: int = BATCH_CHUNKS,
    max_in_flight: int | None = None,
    progress: bool | None = None,
    retry_seconds: float = RETRY_SECONDS,
    resolve_seconds: float = RESOLVE_SECONDS,
    max_message_mb: int = MAX_MESSAGE_MB,
    resume: bool = False,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    frame_format: str = "tsv",
    start_seconds: float | None = None,
    min_length: int = 0,
    access: Access = PLAIN,
) -> RunSummary:
    """Classify `fasta` into VirNucPro's result files in `out_dir`.

    `frame_format` (tsv, parquet, jsonl) is that of the per-frame table; `thresholds` those of
    the weighted verdicts in sequence_summary.tsv. Records shorter than `min_length` are not
    sent: their summary row says `too_short`. Answers are journaled in `out_dir` as they
    come; `resume` continues a stopped run of the same input from its journal. The journal goes
    when the result files are complete, or when the input turns out unusable. `start_seconds`
    (that of an embedded server started for the run) goes into run.json beside the run's own
    seconds. `access`: the token and TLS files the servers ask for; run.json records whether
    they were used, not what they hold.
    """
    if frame_format not in frame_table.FORMATS:
        raise ClientError(f"format must be one of {frame_table.FORMATS}, not {frame_format}")
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    started = time.monotonic()
    # A stream (stdin, a pipe) cannot be checked to be the same input as a stopped run's.
    stream = is_stream(fasta)
    if stream and resume:
        raise journals.ResumeRefused(
            f"--resume needs the input as a file: {fasta} is a stream, which cannot be checked "
            "to be the same input as the stopped run's; run without --resume"
        )
    if min_length < 0:
        raise ClientError(f"the minimum length must be >= 0, not {min_length}")
    classifier = Classifier(
        urls,
        chunk_size,
        batch_chunks=batch_chunks,
        max_in_flight=max_in_flight,
        retry_seconds=retry_seconds,
        resolve_seconds=resolve_seconds,
        max_message_mb=max_message_mb,
        access=access,
    )
    settings = dict(
        input=str(fasta),
        chunk_size=chunk_size,
        min_length=min_length,
        urls=classifier.connection.urls,
        batch_chunks=batch_chunks,
        max_in_flight=classifier.max_in_flight,
        retry_seconds=retry_seconds,
        resolve_seconds=resolve_seconds,
        **access.summary(),
        format=frame_format,
        viral_above=thresholds.viral_above,
        nonviral_below=thresholds.nonviral_below,
        min_chunks=thresholds.min_chunks,
    )
    frames_file = frame_table.FILES[frame_format]
    names = (frames_file, VERDICTS, SUMMARY, VIRUSES, run_info.RUN_INFO)
    journal = None
    try:
        with (
            InputProgress(fasta, "classifying", progress) as bar,
            atomic_files(out_dir, names, binary=frame_table.BINARY) as out,
            FrameTable(frame_format, out[frames_file]) as table,
        ):
            if not stream:
                run = journals.fingerprint(fasta, chunk_size, min_length)
                journal = journals.Journal(out_dir / journals.NAME, run, resume=resume)
            resumed = journal.recorded if journal else 0
            try:
                results = ResultWriter(out, table, thresholds, min_length)
                records = unique_ids(read_fasta(fasta, on_read=bar.read))
                batches = classifier.classify_batches(
                    ((r.id, r.sequence) for r in records),
                    min_length=min_length,
                    journal=journal,
                    on_batch=bar.answered,
                )
                run_interruptible(_write_all(batches, results))
                results.verdicts.write(out[VERDICTS])
                counts, sequence_verdicts = results.counts, results.sequence_verdicts
                connection = classifier.connection
                models = provenance.models(
                    connection.names, pipeline_entries(chunk_size), connection.channels
                )
                run_info.write(
                    out[run_info.RUN_INFO],
                    settings=settings,
                    counts={**counts, "verdicts": sequence_verdicts, "resumed_chunks": resumed},
                    endpoints=[asdict(e) for e in classifier.stats],
                    models=models,
                    started=started_at,
                    seconds=time.monotonic() - started,
                    start_seconds=start_seconds,
                )
            except BaseException as error:
                # Before the directory is taken back: a run refused (bad input) leaves nothing.
                if journal and not getattr(error, "resumable", True):
                    journal.remove()
                raise
    except BaseException:
        if journal:
            journal.close()  # kept: --resume goes on from it
        raise
    finally:
        classifier.close()
    if journal:
        journal.remove()
    # The directory now holds this run's results only: an earlier run's files of another
    # format, its report and its journal would read as this run's.
    remove_stale(out_dir, RUN_FILES, keep=names)
    return RunSummary(
        out_dir=out_dir,
        seconds=time.monotonic() - started,
        resumed_chunks=resumed,
        endpoints=tuple(classifier.stats),
        verdicts=sequence_verdicts,
        models=models,
        start_seconds=start_seconds,
        **counts,
    )


async def _write_all(batches, results: ResultWriter) -> None:
    async for batch in batches:
        results.write(batch)
