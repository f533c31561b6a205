"""The FASTA reader: formats accepted and errors that name file, line and record."""

from __future__ import annotations

import gzip

import pytest

from virnucpro_triton.client.records import unique_ids
from virnucpro_triton.fasta import FastaError, read_fasta


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


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "no FASTA records"),
        (b"\n\n", "no FASTA records"),
        (b"@read1\nACGT\n+\nIIII\n", ":1: not a FASTA file"),
        (b"LOCUS       X 10 bp DNA\n", ":1: not a FASTA file"),
        (bytes(range(256)) * 4, "not a"),
        (b">ok\nACGT\n>bad\nACGT\nAC1T\n", ":5: record 'bad': '1' is not a nucleotide code"),
        (b">ok\nACGT\n>\nACGT\n", ":3: record has an empty id"),
        (b">x\nAC-GT\n", ":2: record 'x': '-' is not a nucleotide code"),
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
