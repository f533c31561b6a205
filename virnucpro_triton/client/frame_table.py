"""The per-frame table in three formats: VirNucPro's TSV, Parquet and JSON Lines.

The TSV is VirNucPro's `prediction_results.txt`, byte for byte. Parquet and JSON Lines carry the
same rows and numbers with the ids split into columns: `id` (the record), `chunk_id`, `frame`
(F1..R3), `p_others`, `p_virus` (float32, as the classifier gives them) and `prediction`. Every
writer streams: Parquet goes out in row groups, so memory does not grow with the table.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, NamedTuple

from virnucpro_triton.client.outputs import PREDICTIONS, prediction, prediction_row, score

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


class _TsvWriter:
    def __init__(self, handle: IO) -> None:
        self._handle = handle
        handle.write(TSV_HEADER)

    def write(self, row: FrameRow) -> None:
        self._handle.write(prediction_row(row.chunk_id + row.frame, row.p_others, row.p_virus))

    def close(self, complete: bool) -> None:
        pass


class _JsonlWriter:
    def __init__(self, handle: IO) -> None:
        self._handle = handle

    def write(self, row: FrameRow) -> None:
        # Numbers as the TSV prints them (shortest float32 text), so both read back the same.
        self._handle.write(
            f'{{"id": {json.dumps(row.id)}, "chunk_id": {json.dumps(row.chunk_id)}, '
            f'"frame": "{row.frame}", "p_others": {score(row.p_others)}, '
            f'"p_virus": {score(row.p_virus)}, '
            f'"prediction": "{prediction(row.p_others, row.p_virus)}"}}\n'
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
        self._rows: list[FrameRow] = []

    def write(self, row: FrameRow) -> None:
        self._rows.append(row)
        if len(self._rows) == ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            columns = [list(c) for c in zip(*self._rows)]
            columns.append([prediction(o, v) for o, v in zip(columns[3], columns[4])])
            arrays = [self._pa.array(c, f.type) for c, f in zip(columns, self._schema)]
            self._writer.write_batch(self._pa.record_batch(arrays, schema=self._schema))
            self._rows = []

    def close(self, complete: bool) -> None:
        if complete:
            self._flush()
        # Always: an open writer would write its footer into a closed file when collected.
        self._writer.close()  # the handle stays open for atomic_files


_WRITERS = {"tsv": _TsvWriter, "parquet": _ParquetWriter, "jsonl": _JsonlWriter}


class FrameTable:
    """Writes the rows of one format into `handle` (binary for Parquet, else text).

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
                record_id = chunk_id.rpartition("_chunk_")[0]
                yield FrameRow(record_id, chunk_id, frame_id[-2:], float(p_others), float(p_virus))
