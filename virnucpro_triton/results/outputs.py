"""Result files in VirNucPro's exact formats, plus the per-record summary; written atomically."""

from __future__ import annotations

import heapq
import os
import tempfile
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, TextIO

import numpy as np
from Bio.Seq import Seq
from Bio.SeqRecord import SeqRecord

from virnucpro_triton.errors import VirnucproError

PREDICTIONS = "prediction_results.txt"
VERDICTS = "prediction_results_highestscore.csv"
SUMMARY = "sequence_summary.tsv"
REPORT = "report.html"
VIRUSES = "virus.fna"  # the records called viral, as geNomad's _virus.fna
LABELS = ("others", "virus")  # the classifier's classes 0 and 1 (models/mlp.py)
# sequence_summary.tsv; the last three are the weighted verdict's (evidence.py)
SUMMARY_COLUMNS = (
    "id",
    "length",
    "chunks",
    "chunks_without_frame",
    "chunks_virus",
    "max_p_virus",
    "weighted_score",
    "verdict",
    "low_confidence",
)


class OutputError(VirnucproError, RuntimeError):
    """A result file cannot be put in place; the message names the path."""


@contextmanager
def atomic_files(
    directory: Path, names: Iterable[str], binary: Collection[str] = ()
) -> Iterator[dict[str, IO]]:
    """Open `names` for writing as temporary files; move them into place only on success, all
    of them or none.

    A run that fails leaves no file that looks complete (and keeps an older complete set), nor
    a directory it created, nor a temporary file. Names in `binary` are opened in binary mode,
    the others as text.
    """
    created = make_directory(directory)
    temps: dict[str, Path] = {}
    handles: dict[str, IO] = {}
    try:
        for name in names:
            temp = directory / f".{name}.partial"
            handles[name] = create_exclusive(temp, binary=name in binary)
            temps[name] = temp  # only the program's own: what it created
        yield handles
        for handle in handles.values():
            handle.close()
        _commit(directory, temps)
    except BaseException:
        for handle in handles.values():
            handle.close()
        for temp in temps.values():
            temp.unlink(missing_ok=True)
        remove_if_empty(directory, created)
        raise


def create_exclusive(path: Path, binary: bool = False) -> IO:
    """A new file at `path`, opened for writing, that is certainly the program's own.

    What stands there (the scratch file of a killed run, or a symbolic link someone planted to
    have another file overwritten) is removed, never followed: the file is then created with
    O_EXCL | O_NOFOLLOW, so one put back in between makes this fail instead.
    """
    with suppress(FileNotFoundError):
        path.unlink()
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
    return os.fdopen(descriptor, "wb") if binary else os.fdopen(descriptor, "w", newline="\n")


def _commit(directory: Path, temps: dict[str, Path]) -> None:
    """Rename each temporary file onto its name: every target is checked first, and an older
    file is kept aside until all are in place, so a rename that fails puts the older set back."""
    for name in temps:
        target = directory / name
        if target.is_dir() and not target.is_symlink():
            raise OutputError(
                f"{target} is a directory, where the result file goes: move it away or "
                "choose another output directory"
            )
    kept: dict[Path, Path] = {}  # target -> its older file, set aside
    placed: list[Path] = []
    try:
        for name, temp in temps.items():
            target = directory / name
            if target.is_symlink() or target.exists():
                kept[target] = directory / f".{name}.previous"
                os.replace(target, kept[target])
            os.replace(temp, target)
            placed.append(target)
    except BaseException:
        for target in placed:
            target.unlink(missing_ok=True)
        for target, older in kept.items():
            os.replace(older, target)
        raise
    for older in kept.values():
        older.unlink()


def remove_stale(directory: Path, owned: Iterable[str], keep: Collection[str]) -> None:
    """Remove the files named in `owned` but not in `keep`: what an earlier run into the same
    directory left. Only the program's own file names are touched, never anything else."""
    for name in owned:
        if name not in keep:
            (directory / name).unlink(missing_ok=True)


def make_directory(directory: Path) -> bool:
    """Create `directory` (and its parents) if needed; return whether it was created."""
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    return created


def remove_if_empty(directory: Path, created: bool) -> None:
    """Take back a directory a failed run created, unless something else went into it."""
    if created:
        with suppress(OSError):
            directory.rmdir()


def scores(values: np.ndarray) -> list[str]:
    """Probabilities as the original prints them: str() of each numpy float32 (the shortest
    text that reads back as the same float32), for a whole array at once."""
    return np.asarray(values, np.float32).astype(str).tolist()


def predictions(p_others: np.ndarray, p_virus: np.ndarray) -> list[str]:
    """Frame labels as VirNucPro prints them: a tie is `others`."""
    return np.where(p_virus > p_others, LABELS[1], LABELS[0]).tolist()


def prediction_rows(frame_ids: list[str], p_others: np.ndarray, p_virus: np.ndarray) -> list[str]:
    """Lines of VirNucPro's `prediction_results.txt`."""
    columns = (frame_ids, predictions(p_others, p_virus), scores(p_others), scores(p_virus))
    return [f"{i}\t{label}\t{o}\t{v}\n" for i, label, o, v in zip(*columns)]


def fasta_record(record_id: str, sequence: str, description: str) -> str:
    """One FASTA record, `>{id} {description}`, the sequence wrapped at 60 columns (Biopython's
    and NCBI's width), its letters as given."""
    return format(SeqRecord(Seq(sequence), id=record_id, description=description), "fasta")


class ChunkVerdicts:
    """VirNucPro's `prediction_results_highestscore.csv`: one verdict per chunk id.

    The original groups frame rows by the frame id minus its last two characters and calls a
    chunk viral when max P(virus) >= max P(others) over its frames; pandas' groupby sorts the
    ids, so the rows come out in string order. Verdicts are sorted in runs spilled to temporary
    files and merged at the end, so memory stays flat on any input size.
    """

    def __init__(self, run_size: int = 200_000) -> None:
        self._run_size = run_size
        self._pending: list[tuple[str, bool]] = []  # (chunk id, verdict) not yet spilled
        self._runs: list[TextIO] = []

    def add(self, chunk_ids: list[str], maxima: np.ndarray) -> None:
        """Chunks with a kept frame (ids unique in the run): their ids and [n, 2] max P(others),
        max P(virus) over their kept frames."""
        self._pending += zip(chunk_ids, (maxima[:, 1] >= maxima[:, 0]).tolist())
        if len(self._pending) >= self._run_size:
            run = tempfile.TemporaryFile("w+")
            run.writelines(self._sorted_pending())
            run.seek(0)
            self._runs.append(run)

    def _sorted_pending(self) -> list[str]:
        self._pending.sort()  # by id alone: ids are unique
        lines = [f"{chunk_id}\t{verdict}\n" for chunk_id, verdict in self._pending]
        self._pending = []
        return lines

    def write(self, handle: TextIO) -> None:
        handle.write("Modified_ID\tIs_Virus\n")
        handle.writelines(heapq.merge(*self._runs, self._sorted_pending(), key=_chunk_key))
        for run in self._runs:
            run.close()


def _chunk_key(line: str) -> str:
    return line[: line.index("\t")]
