"""A served run and its report, for the report's tests (server/test_report.py,
server/test_report_browser.py; their fixtures `fasta` and `run` are in server/conftest.py)."""

from __future__ import annotations

import csv
from pathlib import Path

from virnucpro_triton.commands.predict import predict
from virnucpro_triton.results.outputs import SUMMARY
from virnucpro_triton.results.report import write_report

TOP = 3


def run_and_report(server, fasta: Path, out: Path, format: str) -> Path:
    # One request per run (all chunks in one batch, nothing else in flight): identical numbers
    # run after run, so reports from the three formats can be compared exactly.
    predict(
        fasta,
        300,
        out,
        server.grpc_url,
        batch_chunks=256,
        max_in_flight=1,
        progress=False,
        frame_format=format,
    )
    write_report(out, top=TOP)
    return out


def summary_rows(out: Path) -> list[dict[str, str]]:
    with open(out / SUMMARY, newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))
