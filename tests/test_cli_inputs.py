"""Odd and broken inputs through `virnucpro-triton predict --url` against the real server.

Every input either gives correct results or a one-line error that names the file (and the line
and record where there is one), with a non-zero exit status, no traceback and no output files.
"""

from __future__ import annotations

import csv
import gzip
import os
import random
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from reference import same_table

from virnucpro_triton.client.outputs import PREDICTIONS, SUMMARY, VERDICTS
from virnucpro_triton.client.run_info import RUN_INFO

CLI = str(Path(sys.executable).parent / "virnucpro-triton")
OUTPUTS = [PREDICTIONS, VERDICTS, SUMMARY]
STOPS = {"TAA", "TAG", "TGA"}
CODONS = [a + b + c for a in "ACGT" for b in "ACGT" for c in "ACGT" if a + b + c not in STOPS]
_rng = random.Random(3)
A = "".join(_rng.choices(CODONS, k=240))  # 720 bp, 3 chunks of 300 with a stop-free frame
B = "".join(_rng.choices(CODONS, k=110))
REFERENCE = f">a first contig\n{A}\n>b\n{B}\n"


def spaced(sequence: str) -> str:
    return " ".join(sequence[i : i + 10] for i in range(0, len(sequence), 10))


# Inputs that must give byte-identical results to REFERENCE.
SAME_AS_REFERENCE = {
    "reference.fa": REFERENCE.encode(),
    "gzip.fa.gz": gzip.compress(REFERENCE.encode()),
    "gzip_without_suffix.fa": gzip.compress(REFERENCE.encode()),
    "crlf.fa": REFERENCE.replace("\n", "\r\n").encode(),
    "lowercase.fa": f">a first contig\n{A.lower()}\n>b\n{B.lower()}\n".encode(),
    "rna.fa": f">a first contig\n{A.replace('T', 'U')}\n>b\n{B.replace('T', 'U')}\n".encode(),
    "spaces_in_lines.fa": f">a first contig\n{spaced(A)}\n>b\n{spaced(B)}\n".encode(),
}
# Inputs that must succeed, with these ids in sequence_summary.tsv.
ACCEPTED = {
    "iupac.fa": (f">amb\n{A[:300]}NRYSWKMBDHVnrysw{B}\n".encode(), ["amb"]),
    "empty_record.fa": (f">a\n{B}\n>empty\n>b\n{B}\n".encode(), ["a", "empty", "b"]),
    "mates.fa": (f">r/1 mate\n{A}\n>r/1 mate\n{B}\n".encode(), ["r/1", "r/1#2"]),
    "long_header.fa": (f">{'L' * 100_000}\n{B}\n".encode(), ["L" * 100_000]),
    "path_ids.fa": (
        f">../../escape\n{B}\n>a/../b\n{B}\n>..\n{B}\n".encode(),
        ["../../escape", "a/../b", ".."],
    ),
}
# Inputs that must fail, with a pattern of what the error line says after the file name.
REFUSED = {
    "empty.fa": (b"", ": no FASTA records"),
    "reads.fastq": (b"@read1\nACGT\n+\nIIII\n", ":1: not a FASTA file"),
    "record.gb": (b"LOCUS       X 10 bp DNA\nORIGIN\n        1 acgt\n//\n", ":1: not a FASTA file"),
    "binary.fa": (random.Random(0).randbytes(4096), r"(:1)?: not a text FASTA file"),
    "digit.fa": (f">ok\n{B}\n>bad\nACGT\nAC1T\n".encode(), ":5: record 'bad': '1' is not"),
    "star.fa": (f">ok\n{B}\n>bad\nACGT*\n".encode(), r":4: record 'bad': '\*' is not"),
    "dash.fa": (f">ok\n{B}\n>bad\nAC-GT\n".encode(), ":4: record 'bad': '-' is not"),
    "empty_id.fa": (f">ok\n{B}\n>\nACGT\n".encode(), ":3: record has an empty id"),
}


@dataclass(frozen=True)
class Run:
    input: Path
    out: Path
    returncode: int
    stderr: str

    def output(self, name: str) -> bytes:
        return (self.out / name).read_bytes()

    def summary_ids(self) -> list[str]:
        with open(self.out / SUMMARY, newline="") as handle:
            return [row["id"] for row in csv.DictReader(handle, delimiter="\t")]


@pytest.fixture(scope="module")
def runs(server, tmp_path_factory) -> dict[str, Run]:
    """Every input through the CLI, a few at once: each run spends seconds importing torch."""
    root = tmp_path_factory.mktemp("cli_inputs")
    inputs = {**SAME_AS_REFERENCE, **{n: c for n, (c, _) in {**ACCEPTED, **REFUSED}.items()}}

    def run(name: str) -> Run:
        case = root / name.replace(".", "_")
        (case / "cwd").mkdir(parents=True)
        path = case / name
        path.write_bytes(inputs[name])
        command = [CLI, "predict", str(path), "--chunk-size", "300", "-o", str(case / "out")]
        result = subprocess.run(
            [*command, "--url", server.grpc_url, "--retry-seconds", "0"],
            capture_output=True,
            text=True,
            cwd=case / "cwd",  # a relative path made from an id would land in the case dir
            env={**os.environ, "NO_COLOR": "1"},
            timeout=120,
        )
        return Run(path, case / "out", result.returncode, result.stderr)

    with ThreadPoolExecutor(4) as pool:
        results = dict(zip(inputs, pool.map(run, inputs)))
    # Nothing was written outside the case directories, whatever the ids held.
    assert sorted(p.name for p in root.iterdir()) == sorted(n.replace(".", "_") for n in inputs)
    return results


def assert_succeeded(run: Run) -> None:
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in run.out.iterdir()) == sorted([*OUTPUTS, RUN_INFO])
    assert sorted(p.name for p in run.input.parent.iterdir()) == sorted(
        [run.input.name, "cwd", "out"]
    )
    assert list((run.input.parent / "cwd").iterdir()) == []


@pytest.mark.parametrize("name", [n for n in SAME_AS_REFERENCE if n != "reference.fa"])
def test_equivalent_input_gives_identical_results(runs, name):
    assert_succeeded(runs[name])
    assert runs["reference.fa"].summary_ids() == ["a", "b"]
    for output in OUTPUTS:
        assert same_table(runs[name].output(output), runs["reference.fa"].output(output)), output


@pytest.mark.parametrize("name", list(ACCEPTED))
def test_accepted_input_accounts_for_every_record(runs, name):
    run = runs[name]
    assert_succeeded(run)
    ids = ACCEPTED[name][1]
    assert run.summary_ids() == ids
    predicted = {line.split("\t")[0] for line in run.output(PREDICTIONS).decode().splitlines()[1:]}
    for record_id in ids:
        if record_id != "empty":  # no chunks, so no frames: only its summary row
            assert any(p.startswith(f"{record_id}_chunk_1") for p in predicted), record_id


@pytest.mark.parametrize("name", list(REFUSED))
def test_refused_input_gives_one_line_error_and_no_files(runs, name):
    run = runs[name]
    assert run.returncode != 0
    assert "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert re.search(re.escape(str(run.input)) + REFUSED[name][1], run.stderr), run.stderr
    assert not run.out.exists()
