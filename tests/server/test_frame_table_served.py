"""A served run writes the same numbers in every per-frame table format."""

from __future__ import annotations

import pyarrow.parquet as pq
from reference import jsonl_cells, parquet_cells, tsv_cells

from virnucpro_triton.commands.predict import predict
from virnucpro_triton.results import frame_table
from virnucpro_triton.results.frame_table import FILES


def test_served_run_writes_the_same_numbers_in_every_format(server, mixed_fasta, tmp_path):
    # One request (every chunk in one batch, nothing else in flight) gives the same numbers run
    # after run, so the three runs must agree exactly.
    tables = {}
    for format in frame_table.FORMATS:
        out = tmp_path / format
        predict(
            mixed_fasta,
            300,
            out,
            server.grpc_url,
            batch_chunks=256,
            max_in_flight=1,
            progress=False,
            frame_format=format,
        )
        assert sorted(p.name for p in out.iterdir()) == sorted(
            [
                FILES[format],
                "prediction_results_highestscore.csv",
                "sequence_summary.tsv",
                "virus.fna",
                "run.json",
            ]
        )
        tables[format] = out / FILES[format]
    tsv = tsv_cells(tables["tsv"])
    assert len(tsv) > 10
    assert parquet_cells(tables["parquet"]) == tsv
    assert jsonl_cells(tables["jsonl"]) == tsv
    ids = {r["id"] for r in pq.read_table(tables["parquet"]).to_pylist()}
    assert ids == {"long_contig", "lower", "with_N", "orfs"}
    for name in ["prediction_results_highestscore.csv", "sequence_summary.tsv"]:
        assert (tmp_path / "parquet" / name).read_bytes() == (tmp_path / "tsv" / name).read_bytes()
