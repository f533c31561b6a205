"""Hypothesis fuzzing of the FASTA reader and preprocessing (fixed example budget for CI)."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from virnucpro_triton.fasta import FastaError, read_fasta
from virnucpro_triton.results.preprocess import CHUNKED, NUCLEOTIDE, PROTEIN, preprocess

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ids = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=">"),
    min_size=1,
    max_size=30,
)
sequences = st.text(alphabet="ACGTUNRYacgtunry", max_size=700)
records = st.lists(st.tuples(ids, sequences), min_size=1, max_size=8)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def write(directory: Path, content: bytes) -> Path:
    path = directory / "input.fa"  # each example overwrites the last one's file
    path.write_bytes(content)
    return path


@FUZZ
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_give_records_or_a_fasta_error(fuzz_dir, content):
    path = write(fuzz_dir, content)
    try:
        for record in read_fasta(path):
            assert record.id and record.line >= 1
    except FastaError as error:
        assert str(path) in str(error)  # every error names the file


@FUZZ
@given(records, st.integers(1, 120), st.booleans(), st.booleans())
def test_valid_fasta_reads_back_exactly(fuzz_dir, entries, width, crlf, compressed):
    text = "".join(
        f">{name} description\n"
        + "".join(seq[i : i + width] + "\n" for i in range(0, len(seq), width))
        for name, seq in entries
    )
    if crlf:
        text = text.replace("\n", "\r\n")
    content = text.encode()
    path = write(fuzz_dir, gzip.compress(content) if compressed else content)
    assert [(r.id, r.sequence) for r in read_fasta(path)] == entries


@FUZZ
@given(records, st.sampled_from([300, 500]))
def test_preprocess_writes_one_chunk_record_per_chunk(fuzz_dir, entries, chunk_size):
    entries = [(f"r{i}_{name}", seq) for i, (name, seq) in enumerate(entries)]  # unique ids
    path = write(fuzz_dir, "".join(f">{n}\n{s}\n" for n, s in entries).encode())
    out = fuzz_dir / "out"
    counts = preprocess(path, chunk_size, out)
    expected = sum(math.ceil(len(s) / chunk_size) for _, s in entries)
    assert (out / CHUNKED).read_text().count(">") == counts["chunks"] == expected
    nucleotide = (out / NUCLEOTIDE).read_text().split("\n")
    protein = (out / PROTEIN).read_text().split("\n")
    assert nucleotide[::2] == protein[::2]  # the same frame ids, in the same order
    assert all("*" not in p for p in protein[1::2])
