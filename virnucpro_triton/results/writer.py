"""A predict run's result files, written from the classifier's answers as they arrive.

The per-frame table, the chunk verdicts, the per-sequence summary and virus.fna of one run,
from answers that carry their records (records.py); `commands/predict.py` joins this to the
classifier.
"""

from __future__ import annotations

import numpy as np

from virnucpro_triton.records import ResultBatch
from virnucpro_triton.results import frame_table, run_info
from virnucpro_triton.results import journal as journals
from virnucpro_triton.results.evidence import VERDICT_NAMES, Evidence, Thresholds
from virnucpro_triton.results.frame_table import Frames, FrameTable
from virnucpro_triton.results.outputs import (
    REPORT,
    SUMMARY,
    SUMMARY_COLUMNS,
    VERDICTS,
    VIRUSES,
    ChunkVerdicts,
    fasta_record,
    scores,
)
from virnucpro_triton.sequence import FRAME_NAMES, chunk_id

# Every file a run of `predict` may leave in its OUT_DIR (report.html comes from --report).
RUN_FILES = (
    *frame_table.FILES.values(),
    VERDICTS,
    SUMMARY,
    VIRUSES,
    run_info.RUN_INFO,
    REPORT,
    journals.NAME,
)


class ResultWriter:
    """Writes the result files of a run, one `ResultBatch` at a time: work per batch is numpy
    over all its chunks and one string join per file, not Python per chunk or frame."""

    def __init__(
        self, out: dict, table: FrameTable, thresholds: Thresholds, min_length: int
    ) -> None:
        self._out = out
        self._table = table
        self._thresholds = thresholds
        self._min_length = min_length
        self.verdicts = ChunkVerdicts()
        self.counts = dict(records=0, chunks=0, frames=0, chunks_virus=0, chunks_without_frame=0)
        self.sequence_verdicts = dict.fromkeys(VERDICT_NAMES, 0)
        out[SUMMARY].write("\t".join(SUMMARY_COLUMNS) + "\n")

    def write(self, batch: ResultBatch) -> None:
        results = batch.results
        records = [r.record for r in results]
        lengths = [len(r.sequence) for r in records]
        names = [r.id for r in results]
        chunks = np.array([len(r.kept) for r in results])
        sequence = np.repeat(np.arange(len(results)), chunks)  # of each chunk
        number = np.arange(1, len(sequence) + 1) - np.repeat(np.cumsum(chunks) - chunks, chunks)
        # Only chunks with a kept frame appear in the per-chunk and per-frame files.
        with_frame = np.flatnonzero(batch.kept.any(axis=1))
        sequence, number = sequence[with_frame], number[with_frame]
        chunk_ids = [chunk_id(names[s], j) for s, j in zip(sequence.tolist(), number.tolist())]
        maxima = batch.maxima[with_frame]
        self.verdicts.add(chunk_ids, maxima)

        chunk, frame = np.nonzero(batch.kept[with_frame])  # in VirNucPro's order
        probabilities = batch.probabilities[with_frame[chunk], frame]
        self._table.write(
            Frames(
                [names[s] for s in sequence[chunk].tolist()],
                [chunk_ids[c] for c in chunk.tolist()],
                [FRAME_NAMES[f] for f in frame.tolist()],
                probabilities[:, 0],
                probabilities[:, 1],
            )
        )

        too_short = np.array(lengths, int) < self._min_length
        evidence = Evidence.of(maxima, sequence, chunks, too_short)
        virus = np.bincount(sequence[maxima[:, 1] >= maxima[:, 0]], minlength=len(results))
        best = np.full(len(results), np.nan, np.float32)  # max P(virus) of each sequence
        np.fmax.at(best, sequence, maxima[:, 1])
        columns = (
            names,
            lengths,
            chunks.tolist(),
            (chunks - evidence.chunks).tolist(),
            virus.tolist(),
            np.where(evidence.chunks == 0, "NA", scores(best)).tolist(),
            evidence.columns(self._thresholds),
        )
        self._out[SUMMARY].writelines(
            f"{name}\t{length}\t{n}\t{without}\t{v}\t{b}\t{rest}\n"
            for name, length, n, without, v, b, rest in zip(*columns)
        )
        verdicts = evidence.verdicts(self._thresholds)
        for verdict in verdicts:
            self.sequence_verdicts[verdict] += 1
        viral = [s for s, verdict in enumerate(verdicts) if verdict == "viral"]
        self._out[VIRUSES].writelines(
            fasta_record(
                records[s].id,
                records[s].sequence,
                f"weighted_score={text} chunks={chunks[s]} length={lengths[s]}",
            )
            for s, text in zip(viral, scores(evidence.scores[viral]))
        )
        self.counts["records"] += len(results)
        self.counts["chunks"] += len(batch.kept)
        self.counts["frames"] += len(chunk)
        self.counts["chunks_without_frame"] += len(batch.kept) - len(with_frame)
        self.counts["chunks_virus"] += int(virus.sum())
