"""--min-length: shorter records are not sent, keep their summary row (`too_short`), are
counted in run.json, and a resumed run counts chunks as the stopped one did."""

from __future__ import annotations

import asyncio
import csv
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from inputs import STOP_FREE_CODONS as CODONS
from reference import same_table
from servers import served

from virnucpro_triton.client.classify import Classifier
from virnucpro_triton.client.connection import ClientError
from virnucpro_triton.commands.predict import predict
from virnucpro_triton.results import journal as journals
from virnucpro_triton.results import run_info
from virnucpro_triton.results.outputs import PREDICTIONS, SUMMARY, VERDICTS, VIRUSES
from virnucpro_triton.sequence import chunk_starts

CLI = str(Path(sys.executable).parent / "virnucpro-triton")
MIN_LENGTH = 500
# Lengths around the limit: 499 is too short, 500 is kept; short records sit between long ones.
_rng = random.Random(4)
LENGTHS = [1200, 150, 499, 500, 2000, 90, 0, 650, 301, 1500, 499, 800]
RECORDS = [
    (f"r{i}", "".join(_rng.choices(CODONS, k=n // 3 + 1))[:n]) for i, n in enumerate(LENGTHS)
]
SHORT = [name for name, letters in RECORDS if len(letters) < MIN_LENGTH]
# batch_chunks 4: several requests, so that a journal can hold some of them
SETTINGS = dict(batch_chunks=4, max_in_flight=1, progress=False)


def summary_rows(out: Path) -> list[dict[str, str]]:
    with open(out / SUMMARY, newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def chunks_of(records) -> int:
    return sum(len(chunk_starts(len(letters), 300)) for _, letters in records)


@pytest.fixture(scope="module")
def fasta(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("min_length") / "in.fa"
    path.write_text("".join(f">{name}\n{letters}\n" for name, letters in RECORDS))
    return path


@pytest.fixture(scope="module")
def runs(server, fasta, tmp_path_factory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("min_length_runs")
    for min_length in (0, MIN_LENGTH):
        predict(
            fasta, 300, root / str(min_length), server.grpc_url, min_length=min_length, **SETTINGS
        )
    return {n: root / str(n) for n in (0, MIN_LENGTH)}


def test_short_records_keep_their_row_with_verdict_too_short(runs):
    rows = summary_rows(runs[MIN_LENGTH])
    assert [r["id"] for r in rows] == [name for name, _ in RECORDS]  # input order, all there
    assert [r["length"] for r in rows] == [str(n) for n in LENGTHS]
    for row in rows:
        if row["id"] in SHORT:
            assert (row["chunks"], row["max_p_virus"], row["weighted_score"]) == ("0", "NA", "NA")
            assert (row["verdict"], row["low_confidence"]) == ("too_short", "True")
        else:
            assert row["verdict"] != "too_short"
    assert SHORT == ["r1", "r2", "r5", "r6", "r8", "r10"]


def test_short_records_are_not_sent(runs):
    long = [(n, s) for n, s in RECORDS if n not in SHORT]
    info = run_info.read(runs[MIN_LENGTH])
    assert info["counts"]["chunks"] == chunks_of(long) < chunks_of(RECORDS)
    assert info["counts"]["verdicts"]["too_short"] == len(SHORT)
    assert info["counts"]["records"] == len(RECORDS)
    assert info["settings"]["min_length"] == MIN_LENGTH
    assert run_info.read(runs[0])["counts"]["verdicts"]["too_short"] == 0
    # The kept records' rows are those of the run without a minimum, the short ones' are gone.
    for name in (PREDICTIONS, VERDICTS):
        full = (runs[0] / name).read_text().splitlines(keepends=True)
        kept = [line for line in full if line.split("_chunk_")[0] not in SHORT]
        assert len(kept) < len(full)
        assert same_table("".join(kept).encode(), (runs[MIN_LENGTH] / name).read_bytes()), name


def test_only_short_records_send_no_request(server, fasta, tmp_path):
    before = served(server)
    summary = predict(fasta, 300, tmp_path, server.grpc_url, min_length=10_000, **SETTINGS)
    assert served(server) == before
    assert (summary.chunks, summary.verdicts["too_short"]) == (0, len(RECORDS))
    assert {r["verdict"] for r in summary_rows(tmp_path)} == {"too_short"}
    assert (tmp_path / VIRUSES).read_bytes() == b""


def test_resume_counts_chunks_as_the_stopped_run_did(server, fasta, runs, tmp_path):
    # A stopped run's journal: the answers of the first chunks of the records it sent.
    async def answers():
        async with Classifier(server.grpc_url, 300) as classifier:
            return [r async for r in classifier.classify(RECORDS, min_length=MIN_LENGTH)]

    results = asyncio.run(answers())
    # Each answer carries its record, letters and all; the short ones got no chunk.
    assert [(r.index, r.id, r.record.sequence) for r in results] == [
        (i, name, letters) for i, (name, letters) in enumerate(RECORDS)
    ]
    assert [r.id for r in results if len(r.kept) == 0] == SHORT
    probabilities = np.concatenate([r.probabilities for r in results])[:8]
    kept = np.concatenate([r.kept for r in results])[:8]
    stopped = journals.Journal(
        tmp_path / journals.NAME,
        journals.fingerprint(fasta, 300, MIN_LENGTH),
        resume=False,
    )
    stopped.append(probabilities, kept)
    stopped.close()
    with pytest.raises(ClientError, match=r"another input or settings \(changed: min_length\)"):
        predict(fasta, 300, tmp_path, server.grpc_url, resume=True, **SETTINGS)
    summary = predict(
        fasta, 300, tmp_path, server.grpc_url, resume=True, min_length=MIN_LENGTH, **SETTINGS
    )
    assert summary.resumed_chunks == 8
    assert summary.endpoints[0].answered == -(-(summary.chunks - 8) // 4)  # only the rest
    for name in (PREDICTIONS, VERDICTS, SUMMARY):
        assert same_table((tmp_path / name).read_bytes(), (runs[MIN_LENGTH] / name).read_bytes())


def test_cli_min_length(server, fasta, tmp_path):
    command = [CLI, "predict", str(fasta), "--chunk-size", "300", "-o", str(tmp_path)]
    result = subprocess.run(
        [*command, "--url", server.grpc_url, "--min-length", str(MIN_LENGTH), "--no-progress"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert f"{len(SHORT)} too_short" in result.stdout
    assert [r["id"] for r in summary_rows(tmp_path) if r["verdict"] == "too_short"] == SHORT
    refused = subprocess.run([*command, "--min-length", "-1"], capture_output=True, text=True)
    assert refused.returncode == 2 and "--min-length" in refused.stderr
