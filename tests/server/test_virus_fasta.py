"""virus.fna: exactly the records called viral, their letters as read, written atomically."""

from __future__ import annotations

import csv
import random
import subprocess
import sys
from pathlib import Path

import pytest
from Bio.SeqIO.FastaIO import SimpleFastaParser
from inputs import STOP_FREE_CODONS as CODONS
from inputs import write_fifo

from virnucpro_triton.commands.predict import predict
from virnucpro_triton.fasta import FastaError
from virnucpro_triton.results.evidence import Thresholds
from virnucpro_triton.results.outputs import SUMMARY, VIRUSES

CLI = str(Path(sys.executable).parent / "virnucpro-triton")
# With the tiny models' random weights, scores spread around 0: a cut at 0 calls some viral.
SPLIT = Thresholds(viral_above=0.0, nonviral_below=-0.05)


def _records() -> list[tuple[str, str]]:
    """(id, letters) of contigs and reads written in every way the reader accepts."""
    rng = random.Random(11)
    records = []
    for i in range(24):
        letters = "".join(rng.choices(CODONS, k=rng.randint(40, 400)))
        kind = i % 4
        if kind == 1:
            letters = letters.lower()
        elif kind == 2:
            letters = letters.replace("T", "U")
        elif kind == 3:
            letters = letters[:30] + "NRYacgtn" + letters[38:]
        records.append((f"seq_{i}", letters))
    return [*records, ("seq_0", records[0][1][::-1])]  # a repeated id: seq_0#2


RECORDS = _records()


def fasta_text(width: int) -> str:
    """The records with their sequence lines `width` long, headers with descriptions."""
    return "".join(
        f">{name} some description\n"
        + "".join(letters[i : i + width] + "\n" for i in range(0, len(letters), width))
        for name, letters in RECORDS
    )


def fastq_text() -> str:
    return "".join(f"@{name}\n{letters}\n+\n{'I' * len(letters)}\n" for name, letters in RECORDS)


def summary_rows(out: Path) -> list[dict[str, str]]:
    with open(out / SUMMARY, newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def run(server, path: Path, out: Path, thresholds: Thresholds = SPLIT) -> None:
    predict(path, 300, out, server.grpc_url, progress=False, thresholds=thresholds)


@pytest.fixture(scope="module")
def wrapped_run(server, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("virus_fasta")
    (root / "in.fa").write_text(fasta_text(width=70))
    run(server, root / "in.fa", root / "out")
    return root / "out"


def test_virus_fna_holds_exactly_the_viral_records_as_read(wrapped_run):
    rows = summary_rows(wrapped_run)
    viral = [r for r in rows if r["verdict"] == "viral"]
    assert 0 < len(viral) < len(rows) - 3, "the test input must split into viral and not"
    letters = dict(zip([r["id"] for r in rows], (s for _, s in RECORDS)))  # ids made unique
    with open(wrapped_run / VIRUSES) as handle:
        records = list(SimpleFastaParser(handle))
    assert [title for title, _ in records] == [
        f"{r['id']} weighted_score={r['weighted_score']} chunks={r['chunks']} length={r['length']}"
        for r in viral
    ]
    assert [sequence for _, sequence in records] == [letters[r["id"]] for r in viral]
    # as read: lowercase, U and IUPAC codes kept, not VirNucPro's upper-cased DNA
    assert {c for _, s in records for c in s} - set("ACGT")


def test_virus_fna_lines_are_60_columns(wrapped_run):
    text = (wrapped_run / VIRUSES).read_text()
    for block in text.split(">")[1:]:
        lines = block.split("\n")[1:-1]
        assert all(len(line) == 60 for line in lines[:-1]) and 0 < len(lines[-1]) <= 60


def test_fastq_and_any_line_width_give_the_same_virus_fna(server, wrapped_run, tmp_path):
    (tmp_path / "in.fq").write_text(fastq_text())
    (tmp_path / "one_line.fa").write_text(fasta_text(width=10_000))
    for name in ("in.fq", "one_line.fa"):
        run(server, tmp_path / name, tmp_path / name.replace(".", "_"))
        ids = [r["id"] for r in summary_rows(tmp_path / name.replace(".", "_"))]
        assert ids == [r["id"] for r in summary_rows(wrapped_run)]
        written = (tmp_path / name.replace(".", "_") / VIRUSES).read_text()
        # the same records, letters as read; scores may move in their last digit between runs
        expected = (wrapped_run / VIRUSES).read_text().splitlines()
        assert [(t.split()[0], s) for t, s in SimpleFastaParser(written.splitlines())] == [
            (t.split()[0], s) for t, s in SimpleFastaParser(expected)
        ]


def test_no_viral_record_gives_an_empty_virus_fna(server, tmp_path):
    (tmp_path / "in.fa").write_text(fasta_text(width=60))
    run(server, tmp_path / "in.fa", tmp_path / "out", Thresholds(viral_above=1.0))
    assert (tmp_path / "out" / VIRUSES).read_bytes() == b""


def test_a_failed_run_keeps_the_previous_virus_fna(server, wrapped_run, tmp_path):
    out = tmp_path / "out"
    (tmp_path / "in.fa").write_text(fasta_text(width=60))
    run(server, tmp_path / "in.fa", out)
    before = (out / VIRUSES).read_bytes()
    assert before
    # A stream is read as it comes: its bad last record is met after results were written.
    write_fifo(tmp_path / "fifo", (fasta_text(width=60) + ">bad\nAC1T\n").encode(), pieces=4)
    with pytest.raises(FastaError, match="record 'bad'"):
        run(server, tmp_path / "fifo", out, Thresholds(viral_above=-0.99, nonviral_below=-1))
    assert (out / VIRUSES).read_bytes() == before
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


def test_virus_fna_is_among_the_files_a_reused_directory_keeps_for_its_run(server, tmp_path):
    (tmp_path / "in.fa").write_text(fasta_text(width=60))
    out = tmp_path / "out"
    out.mkdir()
    (out / VIRUSES).write_text(">stale\nACGT\n")
    result = subprocess.run(
        [CLI, "predict", str(tmp_path / "in.fa"), "--chunk-size", "300", "-o", str(out)]
        + ["--url", server.grpc_url, "--viral-above", "1", "--no-progress"],
        capture_output=True,
    )
    assert result.returncode == 0, result.stderr.decode()
    assert (out / VIRUSES).read_bytes() == b""  # this run's: none viral at 1.0
