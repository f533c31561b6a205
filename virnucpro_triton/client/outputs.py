"""Result files in VirNucPro's exact formats, plus the per-record summary; written atomically."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

import numpy as np

PREDICTIONS = "prediction_results.txt"
VERDICTS = "prediction_results_highestscore.csv"
SUMMARY = "sequence_summary.tsv"
LABELS = ("others", "virus")  # classifier classes 0 and 1


@contextmanager
def atomic_files(directory: Path, names: Iterable[str]) -> Iterator[dict[str, TextIO]]:
    """Open `names` for writing as temporary files; rename them into place only on success.

    A run that fails leaves no file that looks complete (and keeps an older complete set).
    """
    directory.mkdir(parents=True, exist_ok=True)
    temps = {name: directory / f".{name}.partial" for name in names}
    handles = {name: open(temp, "w", newline="\n") for name, temp in temps.items()}
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


def prediction_row(frame_id: str, p_others: float, p_virus: float) -> str:
    label = LABELS[1] if p_virus > p_others else LABELS[0]
    return f"{frame_id}\t{label}\t{score(p_others)}\t{score(p_virus)}\n"


class ChunkVerdicts:
    """VirNucPro's `prediction_results_highestscore.csv`: one verdict per chunk id.

    The original groups frame rows by the frame id minus its last two characters and calls a
    chunk viral when max P(virus) >= max P(others) over its frames; pandas' groupby sorts the
    ids, so the rows come out in string order.
    """

    def __init__(self) -> None:
        self._best: dict[str, tuple[float, float]] = {}

    def add(self, frame_id: str, p_others: float, p_virus: float) -> None:
        chunk_id = frame_id[:-2]
        best = self._best.get(chunk_id)
        self._best[chunk_id] = (
            (p_others, p_virus) if best is None else (max(best[0], p_others), max(best[1], p_virus))
        )

    def write(self, handle: TextIO) -> None:
        handle.write("Modified_ID\tIs_Virus\n")
        for chunk_id in sorted(self._best):
            p_others, p_virus = self._best[chunk_id]
            handle.write(f"{chunk_id}\t{p_virus >= p_others}\n")
