"""The server tier: tests against real tritonserver processes. Fixtures of the report's tests."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from inputs import STOP_FREE_CODONS as CODONS
from reference import MIXED
from report_runs import run_and_report


@pytest.fixture(scope="module")
def fasta(tmp_path_factory) -> Path:
    rng = random.Random(5)
    contigs = "".join(
        f">contig_{i}\n{''.join(rng.choices(CODONS, k=rng.randint(50, 900)))}\n" for i in range(12)
    )
    path = tmp_path_factory.mktemp("report_input") / "in.fa"
    path.write_text(MIXED + contigs)
    return path


@pytest.fixture(scope="module")
def run(server, fasta, tmp_path_factory) -> Path:
    return run_and_report(server, fasta, tmp_path_factory.mktemp("report_run"), "tsv")
