"""The per-frame table in TSV (VirNucPro's), Parquet and JSON Lines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from reference import jsonl_cells, parquet_cells, score, tsv_cells

from virnucpro_triton.results import frame_table
from virnucpro_triton.results.frame_table import FILES, FrameRow, Frames, FrameTable, read_frames
from virnucpro_triton.results.outputs import atomic_files, prediction_rows

ROWS = [
    FrameRow("s1", "s1_chunk_1", "F1", 0.002076708, 0.9979233),
    FrameRow("s1", "s1_chunk_1", "R3", 0.5, 0.5),  # a tie is `others`, as in VirNucPro
    FrameRow('odd"id\\é', 'odd"id\\é_chunk_2', "F2", 0.9999999, 1e-07),
    FrameRow("a_chunk_3", "a_chunk_3_chunk_10", "R1", 0.25, 0.75),  # "_chunk_" inside the id
]


def frames(rows: list[FrameRow]) -> Frames:
    ids, chunk_ids, names, p_others, p_virus = map(list, zip(*rows))
    return Frames(ids, chunk_ids, names, np.float32(p_others), np.float32(p_virus))


def write(tmp_path: Path, format: str, rows=ROWS, per_write: int = 2) -> Path:
    name = FILES[format]
    with (
        atomic_files(tmp_path, [name], binary=frame_table.BINARY) as out,
        FrameTable(format, out[name]) as table,
    ):
        for start in range(0, len(rows), per_write):
            table.write(frames(rows[start : start + per_write]))
    return tmp_path / name


def test_tsv_is_virnucpros_text(tmp_path):
    rows = frames(ROWS)
    frame_ids = [r.chunk_id + r.frame for r in ROWS]
    expected = "Sequence_ID\tPrediction\tscore1\tscore2\n" + "".join(
        prediction_rows(frame_ids, rows.p_others, rows.p_virus)
    )
    assert write(tmp_path, "tsv").read_text() == expected
    assert expected.splitlines()[1:3] == [
        "s1_chunk_1F1\tvirus\t0.002076708\t0.9979233",
        "s1_chunk_1R3\tothers\t0.5\t0.5",
    ]


def test_parquet_and_jsonl_hold_the_tsv_rows(tmp_path):
    tsv = tsv_cells(write(tmp_path / "tsv", "tsv"))
    assert parquet_cells(write(tmp_path / "parquet", "parquet")) == tsv
    assert jsonl_cells(write(tmp_path / "jsonl", "jsonl")) == tsv
    schema = pq.read_schema(tmp_path / "parquet" / FILES["parquet"])
    assert schema.names == ["id", "chunk_id", "frame", "p_others", "p_virus", "prediction"]
    assert str(schema.field("p_virus").type) == "float"  # float32, as the classifier gives


@pytest.mark.parametrize("format", frame_table.FORMATS)
def test_every_format_reads_back_the_same_rows(tmp_path, format):
    as_float32 = [r._replace(p_others=score(r.p_others), p_virus=score(r.p_virus)) for r in ROWS]
    back = [
        r._replace(p_others=score(r.p_others), p_virus=score(r.p_virus))
        for r in read_frames(write(tmp_path, format))
    ]
    assert back == as_float32


def test_parquet_goes_out_in_row_groups(tmp_path, monkeypatch):
    monkeypatch.setattr(frame_table, "ROW_GROUP", 4)
    rows = [FrameRow("s", f"s_chunk_{i}", "F1", 0.25, 0.75) for i in range(1, 12)]
    path = write(tmp_path, "parquet", rows, per_write=3)  # groups fill across writes
    metadata = pq.ParquetFile(path).metadata
    assert [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)] == [4, 4, 3]
    assert [r.chunk_id for r in read_frames(path)] == [r.chunk_id for r in rows]


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("format", frame_table.FORMATS)
def test_failed_write_leaves_no_table(tmp_path, format):
    name = FILES[format]
    with pytest.raises(RuntimeError):
        with (
            atomic_files(tmp_path, [name], binary=frame_table.BINARY) as out,
            FrameTable(format, out[name]) as table,
        ):
            table.write(frames(ROWS[:1]))
            raise RuntimeError("server went away")
    assert list(tmp_path.iterdir()) == []
