"""Result files in VirNucPro's exact formats, plus the per-record summary; written atomically."""

from __future__ import annotations

import heapq
import os
import tempfile
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TextIO

import numpy as np

PREDICTIONS = "prediction_results.txt"
VERDICTS = "prediction_results_highestscore.csv"
SUMMARY = "sequence_summary.tsv"
LABELS = ("others", "virus")  # classifier classes 0 and 1


@contextmanager
def atomic_files(
    directory: Path, names: Iterable[str], binary: Collection[str] = ()
) -> Iterator[dict[str, IO]]:
    """Open `names` for writing as temporary files; rename them into place only on success.

    A run that fails leaves no file that looks complete (and keeps an older complete set).
    Names in `binary` are opened in binary mode, the others as text.
    """
    directory.mkdir(parents=True, exist_ok=True)
    temps = {name: directory / f".{name}.partial" for name in names}
    handles = {
        name: open(temp, "wb") if name in binary else open(temp, "w", newline="\n")
        for name, temp in temps.items()
    }
    try:
        yield handles
    except BaseException:
        for handle in handles.values():
            handle.close()
        for temp in temps.values():
            temp.unlink(missing_ok=True)
        raise
    for handle in handles.values():
        handle.close()
    for name, temp in temps.items():
        os.replace(temp, directory / name)


def score(value: float) -> str:
    """A probability as the original prints it: str() of a numpy float32."""
    return str(np.float32(value))


def prediction(p_others: float, p_virus: float) -> str:
    """A frame's label as VirNucPro prints it: a tie is `others`."""
    return LABELS[1] if p_virus > p_others else LABELS[0]


def prediction_row(frame_id: str, p_others: float, p_virus: float) -> str:
    label = prediction(p_others, p_virus)
    return f"{frame_id}\t{label}\t{score(p_others)}\t{score(p_virus)}\n"


class ChunkVerdicts:
    """VirNucPro's `prediction_results_highestscore.csv`: one verdict per chunk id.

    The original groups frame rows by the frame id minus its last two characters and calls a
    chunk viral when max P(virus) >= max P(others) over its frames; pandas' groupby sorts the
    ids, so the rows come out in string order. Frames of a chunk arrive together (ids are unique
    per run), so each verdict is final when the next chunk starts; verdicts are sorted in runs
    spilled to temporary files and merged at the end, so memory stays flat on any input size.
    """

    def __init__(self, run_size: int = 200_000) -> None:
        self._run_size = run_size
        self._chunk: list = []  # [chunk id, max P(others), max P(virus)] of the open chunk
        self._pending: list[str] = []  # "id\tverdict\n" lines not yet spilled
        self._runs: list[TextIO] = []

    def add(self, frame_id: str, p_others: float, p_virus: float) -> None:
        chunk_id = frame_id[:-2]
        if self._chunk and self._chunk[0] == chunk_id:
            self._chunk[1] = max(self._chunk[1], p_others)
            self._chunk[2] = max(self._chunk[2], p_virus)
            return
        self._close_chunk()
        self._chunk = [chunk_id, p_others, p_virus]

    def _close_chunk(self) -> None:
        if self._chunk:
            chunk_id, p_others, p_virus = self._chunk
            self._pending.append(f"{chunk_id}\t{p_virus >= p_others}\n")
            self._chunk = []
        if len(self._pending) >= self._run_size:
            run = tempfile.TemporaryFile("w+")
            run.writelines(sorted(self._pending, key=_chunk_key))
            run.seek(0)
            self._runs.append(run)
            self._pending = []

    def write(self, handle: TextIO) -> None:
        self._close_chunk()
        handle.write("Modified_ID\tIs_Virus\n")
        handle.writelines(
            heapq.merge(*self._runs, sorted(self._pending, key=_chunk_key), key=_chunk_key)
        )
        for run in self._runs:
            run.close()


def _chunk_key(line: str) -> str:
    return line[: line.index("\t")]
