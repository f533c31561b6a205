"""The FASTA reader: formats accepted and errors that name file, line and record."""

from __future__ import annotations

import gzip
import os
import random
import re
import sys
import threading
from pathlib import Path

import pytest
from inputs import corrupt_gzip, peak_rss_mib, write_fifo

from virnucpro_triton.alphabet import DNA, EXPECTED, PROTEIN, first_invalid, nucleotides_only
from virnucpro_triton.fasta import FastaError, check_input, is_stream, read_fasta
from virnucpro_triton.records import unique_ids

CLI = str(Path(sys.executable).parent / "virnucpro-triton")


def records(path):
    return [(r.id, r.sequence, r.line) for r in read_fasta(path)]


def test_plain_gzip_with_and_without_suffix_and_crlf_read_the_same(tmp_path):
    text = ">a first\nACGT\nacgt\n\n>b\nGGNN\n"
    (tmp_path / "plain.fa").write_text(text)
    (tmp_path / "crlf.fa").write_bytes(text.replace("\n", "\r\n").encode())
    (tmp_path / "zipped.fa.gz").write_bytes(gzip.compress(text.encode()))
    (tmp_path / "zipped_no_suffix.fa").write_bytes(gzip.compress(text.encode()))
    expected = [("a", "ACGTacgt", 1), ("b", "GGNN", 5)]
    for name in ["plain.fa", "crlf.fa", "zipped.fa.gz", "zipped_no_suffix.fa"]:
        assert records(tmp_path / name) == expected, name


def test_every_byte_read_is_told_once_as_it_is_read(tmp_path):
    """`on_read` (progress by the input's bytes) counts what is taken from the file, gzip's
    before inflating: all of it by the end, no more."""
    rng = random.Random(0)  # random letters: gzip leaves them large
    text = "".join(f">r{i}\n{''.join(rng.choices('ACGT', k=2000))}\n" for i in range(1000))
    (tmp_path / "plain.fa").write_text(text)
    (tmp_path / "zipped.fa.gz").write_bytes(gzip.compress(text.encode()))
    for name in ["plain.fa", "zipped.fa.gz"]:
        told: list[int] = []
        reader = read_fasta(tmp_path / name, on_read=told.append)
        next(reader)
        assert 0 < sum(told) < (tmp_path / name).stat().st_size  # read as the records go
        assert len(list(reader)) == 999
        assert sum(told) == (tmp_path / name).stat().st_size


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "no FASTA or FASTQ records (the input is empty)"),
        (b"\n\n", "no FASTA or FASTQ records"),
        (b"LOCUS       X 10 bp DNA\n", ":1: not a FASTA or FASTQ file"),
        (bytes(range(256)) * 4, "not a"),
        (b">ok\nACGT\n>bad\nACGT\nAC1T\n", ":5: record 'bad': '1' is not a nucleotide code"),
        (b">ok\nACGT\n>\nACGT\n", ":3: record has an empty id"),
        (b">x\nAC-GT\n", ":2: record 'x': '-' is not a nucleotide code"),
        (b">ok\nACGT\n\xff\xfe\n", ":3: not a text FASTA or FASTQ file"),
        # Control characters in a header would reach the result TSVs raw.
        (b">ok\nACGT\n>a\x00b\nACGT\n", ":3: record header 'a\\x00b' holds the control character"),
        (b">a\x1b[31mred desc\nACGT\n", ":1: record header 'a\\x1b[31mred desc' holds the control"),
        (b">a desc\x7f\nACGT\n", ":1: record header 'a desc\\x7f' holds the control character"),
        # FASTQ: Biopython's reason, with the line of the record's header.
        (b"@r1\nACGT\n+\nIIII\n@r2\nACGT\n+\nIII\n", ":5: malformed FASTQ record 'r2': Lengths"),
        (b"@r1\nACGT\n+\nIIII\nr2\n", ":1: malformed FASTQ record 'r1': Lengths of sequence"),
        (b"@r1\nACGT\n+r2\nIIII\n", ":1: malformed FASTQ record 'r1': Sequence and quality"),
        (b"@r1\nACGT\n", ":1: malformed FASTQ record 'r1': End of file without"),
        (b"@r1\nACGT\n+\nIIII\n@r2\nAC1T\n+\nIIII\n", ":6: record 'r2': '1' is not a nucleotide"),
        (b"@r1\nACGT\n+\nIIII\n@\nACGT\n+\nIIII\n", ":5: record has an empty id"),
        (b"@r\x00\nACGT\n+\nIIII\n", ":1: record header 'r\\x00' holds the control character"),
    ],
)
def test_bad_input_names_file_line_and_problem(tmp_path, content, message):
    path = tmp_path / "input.fa"
    path.write_bytes(content)
    with pytest.raises(FastaError) as error:
        list(read_fasta(path))
    assert str(path) in str(error.value)
    assert message in str(error.value)


def test_missing_file(tmp_path):
    with pytest.raises(FastaError, match="no such file"):
        list(read_fasta(tmp_path / "absent.fa"))


def test_duplicate_ids_are_kept_apart(tmp_path):
    path = tmp_path / "pairs.fa"
    path.write_text(">r1\nAC\n>r1\nGT\n>r1#2\nTT\n>r1\nCC\n")
    ids = [r.id for r in unique_ids(read_fasta(path))]
    assert ids == ["r1", "r1#2", "r1#2#2", "r1#3"]
    assert len(set(ids)) == 4


def test_fastq_gives_the_records_of_the_same_fasta_qualities_ignored(tmp_path):
    fastq = "@r1 sample=1\nACGTn\n+\n@@I!#\n@r2\nGGUU\n+r2\n+@+@\n\n"  # '@' and '+' open qualities
    (tmp_path / "reads.fastq").write_text(fastq)
    (tmp_path / "reads.fq.gz").write_bytes(gzip.compress(fastq.replace("\n", "\r\n").encode()))
    (tmp_path / "reads.fa").write_text(">r1 sample=1\nACGTn\n>r2\nGGUU\n")
    expected = [("r1", "ACGTn"), ("r2", "GGUU")]
    for name in ["reads.fastq", "reads.fq.gz", "reads.fa"]:
        assert [(r.id, r.sequence) for r in read_fasta(tmp_path / name)] == expected, name
    assert [r.line for r in read_fasta(tmp_path / "reads.fastq")] == [1, 5]


def test_corrupt_and_truncated_gzip_name_the_file_and_line(tmp_path):
    whole = gzip.compress(b"".join(b">r%d\n%s\n" % (i, b"ACGT" * 75) for i in range(2000)))
    (tmp_path / "corrupt.fa.gz").write_bytes(corrupt_gzip())
    (tmp_path / "truncated.fa.gz").write_bytes(whole[: len(whole) // 2])
    for name in ["corrupt.fa.gz", "truncated.fa.gz"]:
        with pytest.raises(FastaError) as error:
            list(read_fasta(tmp_path / name))
        assert re.fullmatch(
            re.escape(str(tmp_path / name)) + r":\d+: cannot be read: corrupt or truncated gzip .*",
            str(error.value),
        ), str(error.value)


def test_what_is_not_a_file_is_named_for_what_it_is(tmp_path):
    (tmp_path / "dir.fa").mkdir()
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    (tmp_path / "dangling.fa").symlink_to(tmp_path / "gone.fa")
    cases = {
        tmp_path / "dir.fa": "is a directory, not a FASTA or FASTQ file",
        tmp_path / "loop1": "cannot be opened: symbolic link loop",
        tmp_path / "dangling.fa": f"broken symbolic link to {tmp_path / 'gone.fa'}",
        Path(os.devnull): "no FASTA or FASTQ records (the input is empty)",
    }
    for path, message in cases.items():
        with pytest.raises(FastaError) as error:
            list(read_fasta(path))
        assert str(error.value) == f"{path}: {message}"


@pytest.mark.parametrize("compressed", [False, True])
def test_a_fifo_is_read_once_as_a_stream(tmp_path, compressed):
    text = b">a\nACGT\n>b\nGGNN\n"
    content = gzip.compress(text) if compressed else text
    writer = write_fifo(tmp_path / "input", content, pieces=len(content))  # a byte per write
    assert is_stream(tmp_path / "input")
    assert records(tmp_path / "input") == [("a", "ACGT", 1), ("b", "GGNN", 3)]
    writer.join(timeout=60)
    assert not writer.is_alive()


def test_a_fifo_is_not_opened_by_the_check_before_the_run(tmp_path):
    os.mkfifo(tmp_path / "input")
    checked = threading.Thread(target=check_input, args=(tmp_path / "input",), daemon=True)
    checked.start()
    checked.join(timeout=60)  # opening a FIFO for reading blocks until a writer comes
    assert not checked.is_alive()
    assert not is_stream(tmp_path / "absent.fa")  # reading says "no such file"


def test_one_alphabet_for_the_reader_the_client_and_the_server(tmp_path):
    from virnucpro_triton.sequence_embedders import check_dna, check_protein

    rna, iupac = "ACGUacgu", "NRYSWKMBDHVnryswkmbdhv"
    for sequence in [rna, iupac]:
        (tmp_path / "in.fa").write_text(f">x\n{sequence}\n")
        assert records(tmp_path / "in.fa") == [("x", sequence, 1)]
        assert first_invalid(sequence) is None
        assert check_dna(sequence) is None  # what the served dnabert_s accepts
    assert check_dna("ACGX") == f"'X' is not {EXPECTED[DNA]}"
    assert check_protein("MKVLAAGIJOUXBZ") is None
    assert check_protein("MK*") == f"'*' is not {EXPECTED[PROTEIN]}"
    assert nucleotides_only("ACGTUNacgtun") and not nucleotides_only("MKVACGT")


def test_lines_longer_than_a_read_piece_are_read_whole(tmp_path):
    header, sequence = "h" * 3_000_000, "ACGT" * 700_000  # each over the 1 MiB read piece
    (tmp_path / "long.fa").write_text(f">{header} x\n{sequence}\n>b\nAC")
    assert records(tmp_path / "long.fa") == [(header, sequence, 1), ("b", "AC", 3)]


@pytest.mark.parametrize(
    ("head", "message"),
    [
        (b"", ":1: not a FASTA or FASTQ file: expected a header line starting with '>' or '@'"),
        (b">a\n", ":2: line longer than 64 MiB"),
    ],
)
def test_a_multi_gigabyte_file_without_line_breaks_is_refused_in_bounded_memory(
    tmp_path, head, message
):
    path = tmp_path / "sparse.fa"
    path.write_bytes(head)
    os.truncate(path, 3 << 30)  # 3 GiB of NUL bytes, no line break, no disk used
    out = tmp_path / "out"
    command = [CLI, "preprocess", str(path), "--chunk-size", "300", "--out-dir", str(out)]
    result, peak = peak_rss_mib(command)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(f"virnucpro-triton: error: {path}{message}"), result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert peak < 512, peak  # a read of the whole line would take over 3 GiB
    assert not out.exists()
