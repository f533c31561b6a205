"""The per-frame table in three formats: VirNucPro's TSV, Parquet and JSON Lines.

The TSV is VirNucPro's `prediction_results.txt`, byte for byte. Parquet and JSON Lines carry the
same rows and numbers with the ids split into columns: `id` (the record), `chunk_id`, `frame`
(F1..R3), `p_others`, `p_virus` (float32, as the classifier gives them) and `prediction`. Every
writer streams: Parquet goes out in row groups, so memory does not grow with the table.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, NamedTuple

import numpy as np

from virnucpro_triton.results.outputs import PREDICTIONS, prediction_rows, predictions, scores
from virnucpro_triton.sequence import split_chunk_id

FORMATS = ("tsv", "parquet", "jsonl")
FILES = {
    "tsv": PREDICTIONS,
    "parquet": "prediction_results.parquet",
    "jsonl": "prediction_results.jsonl",
}
BINARY = frozenset({FILES["parquet"]})  # files to open in binary mode
TSV_HEADER = "Sequence_ID\tPrediction\tscore1\tscore2\n"
ROW_GROUP = 65_536  # Parquet rows buffered before they are written out as one row group


class FrameRow(NamedTuple):
    id: str  # the record
    chunk_id: str  # {id}_chunk_{j}
    frame: str  # F1 F2 F3 R1 R2 R3
    p_others: float
    p_virus: float


@dataclass(frozen=True)
class Frames:
    """Rows as columns: the writers take many at once, so the per-row work is one join."""

    ids: list[str]
    chunk_ids: list[str]
    frames: list[str]
    p_others: np.ndarray  # float32
    p_virus: np.ndarray


class _TsvWriter:
    def __init__(self, handle: IO) -> None:
        self._handle = handle
        handle.write(TSV_HEADER)

    def write(self, rows: Frames) -> None:
        frame_ids = [c + f for c, f in zip(rows.chunk_ids, rows.frames)]
        self._handle.writelines(prediction_rows(frame_ids, rows.p_others, rows.p_virus))

    def close(self, complete: bool) -> None:
        pass


# json.dumps of a str is this function of the encoder, which is all that dumps runs for one.
_json_string = json.encoder.encode_basestring_ascii


class _JsonlWriter:
    def __init__(self, handle: IO) -> None:
        self._handle = handle

    def write(self, rows: Frames) -> None:
        # Numbers as the TSV prints them (shortest float32 text), so both read back the same.
        columns = (
            map(_json_string, rows.ids),
            map(_json_string, rows.chunk_ids),
            rows.frames,
            scores(rows.p_others),
            scores(rows.p_virus),
            predictions(rows.p_others, rows.p_virus),
        )
        self._handle.writelines(
            f'{{"id": {i}, "chunk_id": {c}, "frame": "{f}", "p_others": {o}, '
            f'"p_virus": {v}, "prediction": "{label}"}}\n'
            for i, c, f, o, v, label in zip(*columns)
        )

    def close(self, complete: bool) -> None:
        pass


class _ParquetWriter:
    def __init__(self, handle: IO) -> None:
        import pyarrow as pa  # imported here: only Parquet runs pay for it
        import pyarrow.parquet as pq

        self._pa = pa
        self._schema = pa.schema(
            [
                ("id", pa.string()),
                ("chunk_id", pa.string()),
                ("frame", pa.string()),
                ("p_others", pa.float32()),
                ("p_virus", pa.float32()),
                ("prediction", pa.string()),
            ]
        )
        self._writer = pq.ParquetWriter(handle, self._schema)
        self._batches: list = []  # rows not written yet
        self._rows = 0

    def write(self, rows: Frames) -> None:
        columns = (
            rows.ids,
            rows.chunk_ids,
            rows.frames,
            rows.p_others,
            rows.p_virus,
            predictions(rows.p_others, rows.p_virus),
        )
        arrays = [self._pa.array(c, f.type) for c, f in zip(columns, self._schema)]
        self._batches.append(self._pa.record_batch(arrays, schema=self._schema))
        self._rows += len(rows.ids)
        if self._rows >= ROW_GROUP:
            self._flush(whole_groups=True)

    def _flush(self, whole_groups: bool) -> None:
        """Write the buffered rows in row groups of ROW_GROUP rows, keeping back the rows of a
        last partial group when `whole_groups`."""
        table = self._pa.Table.from_batches(self._batches, self._schema)
        size = len(table) // ROW_GROUP * ROW_GROUP if whole_groups else len(table)
        if size:  # contiguous columns: the file is byte for byte that of one batch per group
            group = table.slice(0, size).combine_chunks()
            self._writer.write_table(group, row_group_size=ROW_GROUP)
        rest = table.slice(size)
        self._batches, self._rows = rest.to_batches(), len(rest)

    def close(self, complete: bool) -> None:
        if complete:
            self._flush(whole_groups=False)
        # Always: an open writer would write its footer into a closed file when collected.
        self._writer.close()  # the handle stays open for atomic_files


_WRITERS = {"tsv": _TsvWriter, "parquet": _ParquetWriter, "jsonl": _JsonlWriter}


class FrameTable:
    """Writes the rows of one format into `handle` (binary for Parquet, else text): `write`
    takes `Frames`.

    A context manager: leaving it finishes the file (the Parquet footer). After an error the
    file is abandoned as it is; atomic_files removes it.
    """

    def __init__(self, format: str, handle: IO) -> None:
        self._writer = _WRITERS[format](handle)
        self.write = self._writer.write

    def __enter__(self) -> FrameTable:
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        self._writer.close(complete=error_type is None)


def read_frames(path: Path) -> Iterator[FrameRow]:
    """The rows of a per-frame table of any format (told by the file name), streamed."""
    if path.name == FILES["parquet"]:
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=ROW_GROUP):
            columns = batch.to_pydict()
            yield from map(FrameRow, *(columns[name] for name in FrameRow._fields))
    elif path.name == FILES["jsonl"]:
        with open(path) as handle:
            for line in handle:
                row = json.loads(line)
                yield FrameRow(*(row[name] for name in FrameRow._fields))
    else:
        with open(path) as handle:
            next(handle)  # header
            for line in handle:
                frame_id, _, p_others, p_virus = line.rstrip("\n").split("\t")
                chunk_id = frame_id[:-2]
                record_id = split_chunk_id(chunk_id)[0]
                yield FrameRow(record_id, chunk_id, frame_id[-2:], float(p_others), float(p_virus))
