"""Odd and broken inputs through `virnucpro-triton predict --url` against the real server.

Every input either gives correct results or a one-line error that names the file (and the line
and record where there is one), with a non-zero exit status, no traceback and no output files.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import random
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from inputs import STOP_FREE_CODONS as CODONS
from inputs import corrupt_gzip, write_fifo
from reference import same_table
from tqdm import tqdm

from virnucpro_triton.results.outputs import PREDICTIONS, SUMMARY, VERDICTS, VIRUSES
from virnucpro_triton.results.run_info import RUN_INFO

CLI = str(Path(sys.executable).parent / "virnucpro-triton")
OUTPUTS = [PREDICTIONS, VERDICTS, SUMMARY]  # compared between equivalent inputs
_rng = random.Random(3)
A = "".join(_rng.choices(CODONS, k=240))  # 720 bp, 3 chunks of 300 with a stop-free frame
B = "".join(_rng.choices(CODONS, k=110))
REFERENCE = f">a first contig\n{A}\n>b\n{B}\n"
# The same records as FASTQ, qualities (opening with '@' and '+' to be awkward) ignored.
FASTQ = f"@a first contig\n{A}\n+\n@{'I' * (len(A) - 1)}\n@b\n{B}\n+b\n+{'#' * (len(B) - 1)}\n"


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
    "reads.fastq": FASTQ.encode(),
    "reads_gzip.fq": gzip.compress(FASTQ.encode()),
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
    "empty.fa": (b"", ": no FASTA or FASTQ records"),
    "record.gb": (
        b"LOCUS       X 10 bp DNA\nORIGIN\n        1 acgt\n//\n",
        ":1: not a FASTA or FASTQ file",
    ),
    "binary.fa": (random.Random(0).randbytes(4096), r":\d+: not a text FASTA or FASTQ file"),
    "corrupt.fa.gz": (corrupt_gzip(), r":\d+: cannot be read: corrupt or truncated gzip data"),
    "nul_header.fa": (
        f">ok\n{B}\n>bad\x00id\n{B}\n".encode(),
        r":3: record header 'bad\\x00id' holds the control character '\\x00'",
    ),
    "malformed.fastq": (
        f"@ok\n{B}\n+\n{'I' * len(B)}\n@short\nACGT\n+\nIII\n".encode(),
        r":5: malformed FASTQ record 'short': Lengths of sequence and quality values differ",
    ),
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
    assert sorted(p.name for p in run.out.iterdir()) == sorted([*OUTPUTS, VIRUSES, RUN_INFO])
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


def cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CLI, *args],
        input=stdin,
        capture_output=True,
        env={**os.environ, "NO_COLOR": "1"},
        timeout=300,
    )


def predict_args(server, source: str, out: Path, *extra: str) -> list[str]:
    url = ["--url", server.grpc_url, "--retry-seconds", "0"]
    return ["predict", source, "--chunk-size", "300", "-o", str(out), *url, *extra]


def embed_args(server, source: str, out: Path, model: str = "dnabert_s", *extra: str) -> list:
    url = ["--url", server.grpc_url, "--retry-seconds", "0"]
    return ["embed", source, "--model", model, "-o", str(out), *url, *extra]


def assert_one_line_error(result: subprocess.CompletedProcess, expected: str) -> None:
    stderr = result.stderr.decode()
    assert result.returncode == 1, stderr
    assert "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert re.fullmatch(f"virnucpro-triton: error: {expected}\n", stderr), stderr


def test_what_is_not_a_readable_file_gets_its_own_message_in_every_command(server, tmp_path):
    (tmp_path / "dir.fa").mkdir()
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    (tmp_path / "corrupt.fa.gz").write_bytes(corrupt_gzip())
    cases = {
        tmp_path / "dir.fa": ": is a directory, not a FASTA or FASTQ file",
        tmp_path / "loop1": ": cannot be opened: symbolic link loop",
        Path(os.devnull): r": no FASTA or FASTQ records \(the input is empty\)",
        tmp_path / "corrupt.fa.gz": r":\d+: cannot be read: corrupt or truncated gzip data \(.*\)",
    }
    commands = {
        "predict": lambda source, out: predict_args(server, source, out),
        "preprocess": lambda source, out: [
            "preprocess",
            source,
            "--chunk-size",
            "300",
            "--out-dir",
            str(out),
        ],
        "embed": lambda source, out: embed_args(server, source, out / "e.npy"),
    }
    jobs = [(c, p) for c in commands for p in cases]
    with ThreadPoolExecutor(4) as pool:
        results = pool.map(
            lambda job: cli(*commands[job[0]](str(job[1]), tmp_path / f"out_{jobs.index(job)}")),
            jobs,
        )
        for (_, path), result in zip(jobs, results):
            assert_one_line_error(result, re.escape(str(path)) + cases[path])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["dir.fa", "loop1", "loop2", "corrupt.fa.gz"]
    )  # no output directory or file from any failed run


@pytest.fixture(scope="module")
def streamed(server, runs, tmp_path_factory) -> dict[str, Path]:
    """REFERENCE through predict as stdin and as FIFOs (what `<(zcat x.gz)` hands over)."""
    root = tmp_path_factory.mktemp("streams")
    gzipped = gzip.compress(REFERENCE.encode())

    def run(name: str) -> Path:
        out = root / f"out_{name}"
        if name.startswith("stdin"):
            content = gzipped if name == "stdin_gzip" else FASTQ.encode()
            result = cli(*predict_args(server, "-", out), stdin=content)
        else:
            fifo = root / name
            writer = write_fifo(fifo, gzipped if name == "fifo_gzip" else REFERENCE.encode())
            result = cli(*predict_args(server, str(fifo), out))
            writer.join(timeout=60)
            assert not writer.is_alive()
        assert result.returncode == 0, result.stderr.decode()
        return out

    names = ["stdin_fastq", "stdin_gzip", "fifo", "fifo_gzip"]
    with ThreadPoolExecutor(4) as pool:
        return dict(zip(names, pool.map(run, names)))


@pytest.mark.parametrize("name", ["stdin_fastq", "stdin_gzip", "fifo", "fifo_gzip"])
def test_stdin_and_fifos_are_read_as_streams_with_identical_results(streamed, runs, name):
    assert sorted(p.name for p in streamed[name].iterdir()) == sorted([*OUTPUTS, VIRUSES, RUN_INFO])
    for output in OUTPUTS:
        reference = runs["reference.fa"].output(output)
        assert same_table((streamed[name] / output).read_bytes(), reference), output


def test_resume_of_a_stream_is_refused_with_what_to_do(server, tmp_path):
    result = cli(*predict_args(server, "-", tmp_path / "out", "--resume"), stdin=b">a\nACGT\n")
    assert_one_line_error(
        result,
        "--resume needs the input as a file: - is a stream, which cannot be checked to be "
        "the same input as the stopped run's; run without --resume",
    )


def test_resume_refusal_does_not_also_say_resume_goes_on(server, tmp_path):
    from virnucpro_triton.results import journal

    (tmp_path / "other.fa").write_text(f">o\n{B}\n")
    (tmp_path / "in.fa").write_text(REFERENCE)
    out = tmp_path / "out"
    stopped = journal.Journal(
        out / journal.NAME, journal.fingerprint(tmp_path / "other.fa", 300), resume=False
    )
    stopped.close()
    result = cli(*predict_args(server, str(tmp_path / "in.fa"), out, "--resume"))
    assert_one_line_error(
        result,
        f"--resume: the unfinished run in {re.escape(str(out))} was made with another input or "
        r"settings \(changed: .*\); run without --resume to start again",
    )


def test_resume_is_not_named_where_it_could_not_go_on(tmp_path):
    from virnucpro_triton.processes import free_port
    from virnucpro_triton.results import journal

    (tmp_path / "other.fa").write_text(f">o\n{B}\n")
    (tmp_path / "in.fa").write_text(REFERENCE)
    out = tmp_path / "out"
    nowhere = f"127.0.0.1:{free_port()}"  # nothing listens: the run ends before any answer
    # The journal of a stopped run of another input: --resume would refuse it.
    other = journal.fingerprint(tmp_path / "other.fa", 300)
    journal.Journal(out / journal.NAME, other, resume=False).close()
    args = ["predict", str(tmp_path / "in.fa"), "--chunk-size", "300", "-o", str(out)]
    result = cli(*args, "--url", nowhere, "--retry-seconds", "0")
    stderr = result.stderr.decode()
    assert result.returncode == 1 and nowhere in stderr, stderr
    assert "--resume" not in stderr and len(stderr.splitlines()) == 1, stderr
    # A journal of this input, but with no answer in it: --resume would start again.
    this = journal.fingerprint(tmp_path / "in.fa", 300)
    journal.Journal(out / journal.NAME, this, resume=False).close()
    result = cli(*args, "--url", nowhere, "--retry-seconds", "0", "--resume")
    stderr = result.stderr.decode()
    assert result.returncode == 1 and nowhere in stderr, stderr
    assert "--resume" not in stderr and len(stderr.splitlines()) == 1, stderr


def test_a_reused_output_directory_keeps_only_the_last_runs_files(server, tmp_path):
    (tmp_path / "in.fa").write_text(REFERENCE)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("the user's own file\n")
    first = cli(
        *predict_args(server, str(tmp_path / "in.fa"), out, "--format", "jsonl", "--report")
    )
    assert first.returncode == 0, first.stderr.decode()
    jsonl_run = {
        "prediction_results.jsonl",
        "report.html",
        "notes.txt",
        VERDICTS,
        SUMMARY,
        VIRUSES,
        RUN_INFO,
    }
    assert {p.name for p in out.iterdir()} == jsonl_run
    second = cli(*predict_args(server, str(tmp_path / "in.fa"), out))
    assert second.returncode == 0, second.stderr.decode()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*OUTPUTS, VIRUSES, RUN_INFO, "notes.txt"]
    )
    assert (out / "notes.txt").read_text() == "the user's own file\n"


def test_a_directory_where_a_result_goes_keeps_the_older_run_whole(server, tmp_path):
    (tmp_path / "old.fa").write_text(f">old\n{B}\n")
    (tmp_path / "in.fa").write_text(REFERENCE)
    out = tmp_path / "out"
    first = cli(*predict_args(server, str(tmp_path / "old.fa"), out))
    assert first.returncode == 0, first.stderr.decode()
    (out / SUMMARY).unlink()
    (out / SUMMARY).mkdir()  # where the next run's summary goes
    older = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    result = cli(*predict_args(server, str(tmp_path / "in.fa"), out))
    assert_one_line_error(
        result,
        f"{re.escape(str(out / SUMMARY))} is a directory, where the result file goes: move it "
        "away or choose another output directory; --resume goes on from here",
    )
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == {
        **older,
        ".predict-journal": (out / ".predict-journal").read_bytes(),
    }  # the older run's files, untouched, and the journal; no .partial
    (out / SUMMARY).rmdir()
    resumed = cli(*predict_args(server, str(tmp_path / "in.fa"), out, "--resume"))
    assert resumed.returncode == 0, resumed.stderr.decode()
    assert sorted(p.name for p in out.iterdir()) == sorted([*OUTPUTS, VIRUSES, RUN_INFO])


def test_planted_symlinks_in_the_output_directory_are_never_followed(server, tmp_path):
    from virnucpro_triton.results import journal

    (tmp_path / "in.fa").write_text(REFERENCE)
    victims = {name: tmp_path / f"victim{i}" for i, name in enumerate(["journal", "partial"])}
    for victim in victims.values():
        victim.write_text("the user's own file\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / journal.NAME).symlink_to(victims["journal"])
    (out / f".{SUMMARY}.partial").symlink_to(victims["partial"])
    resumed = cli(*predict_args(server, str(tmp_path / "in.fa"), out, "--resume"))
    assert_one_line_error(
        resumed,
        f"--resume: {re.escape(str(out / journal.NAME))} is a symbolic link, not a journal this "
        "program wrote; remove it and run without --resume",
    )
    result = cli(*predict_args(server, str(tmp_path / "in.fa"), out))
    assert result.returncode == 0, result.stderr.decode()
    assert sorted(p.name for p in out.iterdir()) == sorted([*OUTPUTS, VIRUSES, RUN_INFO])
    for victim in victims.values():
        assert victim.read_text() == "the user's own file\n"


def test_resume_drops_a_block_that_claims_more_chunks_than_the_file_holds(server, tmp_path):
    from virnucpro_triton.results import journal

    (tmp_path / "in.fa").write_text(REFERENCE)
    out = tmp_path / "out"
    stopped = journal.Journal(
        out / journal.NAME, journal.fingerprint(tmp_path / "in.fa", 300), resume=False
    )
    stopped.close()
    at = (out / journal.NAME).stat().st_size
    with open(out / journal.NAME, "ab") as handle:  # 0xFFFFFFFF chunks: 215 GiB of answers
        handle.write(b"\xff\xff\xff\xff\x00\x00\x00\x00" + bytes(54))
    result = cli(*predict_args(server, str(tmp_path / "in.fa"), out, "--resume"))
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr.decode() == (
        f"virnucpro-triton: {out / journal.NAME}: the block at byte {at} is torn or damaged (a "
        "run stopped while writing it): it and what follows are dropped, their chunks asked "
        "again\n"
    )
    assert sorted(p.name for p in out.iterdir()) == sorted([*OUTPUTS, VIRUSES, RUN_INFO])
    assert json.loads((out / RUN_INFO).read_text())["counts"]["resumed_chunks"] == 0


def test_version_comes_from_the_package_metadata():
    from importlib.metadata import version

    result = cli("--version")
    assert result.returncode == 0
    assert result.stdout.decode() == f"virnucpro-triton, version {version('virnucpro-triton')}\n"


def embedded(out: Path) -> tuple[np.ndarray, list[str]]:
    return np.load(out), out.with_suffix(".ids.txt").read_text().splitlines()


def test_embed_reads_rna_stdin_and_fifos_like_the_dna_file(server, tmp_path):
    """dnabert_s embeds the RNA predict accepts, as the same DNA; `-` and a FIFO read once."""
    (tmp_path / "dna.fa").write_text(REFERENCE)
    rna = REFERENCE.replace(A, A.replace("T", "U")).replace(B, B.replace("T", "u"))
    (tmp_path / "rna.fa").write_text(rna)
    writer = write_fifo(tmp_path / "fifo", gzip.compress(REFERENCE.encode()))
    runs = {
        "dna": embed_args(server, str(tmp_path / "dna.fa"), tmp_path / "dna.npy"),
        "rna": embed_args(server, str(tmp_path / "rna.fa"), tmp_path / "rna.npy"),
        "stdin": embed_args(server, "-", tmp_path / "stdin.npy"),
        "fifo": embed_args(server, str(tmp_path / "fifo"), tmp_path / "fifo.npy"),
    }
    with ThreadPoolExecutor(4) as pool:
        stdin = FASTQ.encode()
        results = dict(zip(runs, pool.map(lambda n: cli(*runs[n], stdin=stdin), runs)))
    writer.join(timeout=60)
    for name, result in results.items():
        assert result.returncode == 0, (name, result.stderr.decode())
        assert result.stderr.decode() == ""  # no progress bar off a terminal, no warning
    vectors, ids = embedded(tmp_path / "dna.npy")
    assert ids == ["a", "b"] and vectors.shape[0] == 2 and np.isfinite(vectors).all()
    for name in ["rna", "stdin", "fifo"]:
        other, other_ids = embedded(tmp_path / f"{name}.npy")
        assert other_ids == ids
        np.testing.assert_allclose(other, vectors, atol=1e-6, rtol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["dna.fa", "rna.fa", "fifo", *[f"{n}{s}" for n in runs for s in (".npy", ".ids.txt")]]
    )  # no spooled rows or partial files left


def test_embed_esm2_warns_once_of_dna_and_shows_progress_when_asked(server, tmp_path):
    (tmp_path / "mixed.faa").write_text(
        ">prot1\nMKVLAAGIWR\n>dna1\nACGTACGTNN\n>prot2\nMSTNPKPQRK\n>rna2\nacguacgu\n"
    )
    out = tmp_path / "mixed.npy"
    result = cli(*embed_args(server, str(tmp_path / "mixed.faa"), out, "esm2", "--progress"))
    stderr = result.stderr.decode()
    assert result.returncode == 0, stderr
    warning = (
        "virnucpro-triton: warning: 2 records hold only nucleotide letters (the first: 'dna1'); "
        "esm2 embeds them as protein, --model dnabert_s embeds DNA"
    )
    assert stderr.count("warning") == 1 and warning in stderr.splitlines(), stderr
    size = tqdm.format_sizeof((tmp_path / "mixed.faa").stat().st_size)
    shown = re.escape(f" {size}/{size} [")  # tqdm's bar of the input's bytes, read once
    assert re.search(f"embedding: 100%.*{shown}", stderr), stderr
    assert embedded(out)[1] == ["prot1", "dna1", "prot2", "rna2"]


def test_predict_shows_the_share_of_the_input_read_when_asked(server, tmp_path):
    (tmp_path / "in.fa").write_text(REFERENCE)
    result = cli(*predict_args(server, str(tmp_path / "in.fa"), tmp_path / "out", "--progress"))
    assert result.returncode == 0, result.stderr.decode()
    size = tqdm.format_sizeof((tmp_path / "in.fa").stat().st_size)
    shown = re.escape(f" {size}/{size} [")  # the input's bytes, read once
    assert re.search(f"classifying: 100%.*{shown}", result.stderr.decode()), result.stderr


def test_preprocess_reads_stdin_and_fastq_like_the_fasta_file(tmp_path):
    (tmp_path / "in.fa").write_text(REFERENCE)
    file = cli(
        "preprocess",
        str(tmp_path / "in.fa"),
        "--chunk-size",
        "300",
        "--out-dir",
        str(tmp_path / "file"),
    )
    piped = cli(
        "preprocess",
        "-",
        "--chunk-size",
        "300",
        "--out-dir",
        str(tmp_path / "stdin"),
        stdin=gzip.compress(FASTQ.encode()),
    )
    assert file.returncode == 0 and piped.returncode == 0, piped.stderr.decode()
    names = sorted(p.name for p in (tmp_path / "file").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "stdin").iterdir()) and len(names) == 3
    for name in names:
        assert (tmp_path / "stdin" / name).read_bytes() == (tmp_path / "file" / name).read_bytes()
