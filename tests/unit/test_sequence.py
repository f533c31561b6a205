"""VirNucPro's sequence logic: peer reference files byte for byte, plus properties."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import PEER

from virnucpro_triton.results.preprocess import CHUNKED, NUCLEOTIDE, PROTEIN, preprocess
from virnucpro_triton.sequence import (
    CODON_TABLE,
    chunk_starts,
    chunks,
    reverse_complement,
    six_frames,
    translate,
)

PEER_SETS = ["test_fixed_500bp", "test_with_orfs", "test_sequences_small"]


@pytest.mark.parametrize("name", PEER_SETS)
def test_preprocess_matches_peer_files_byte_for_byte(name, tmp_path):
    counts = preprocess(PEER / f"{name}.fa", 500, tmp_path)
    assert (tmp_path / CHUNKED).read_bytes() == (PEER / f"{name}_chunked500.fa").read_bytes()
    assert (tmp_path / NUCLEOTIDE).read_bytes() == (
        PEER / f"{name}_identified_nucleotide.fa"
    ).read_bytes()
    assert (tmp_path / PROTEIN).read_bytes() == (
        PEER / f"{name}_identified_protein.faa"
    ).read_bytes()
    assert counts["chunks"] == (PEER / f"{name}_chunked500.fa").read_text().count(">")


def test_chunk_layout_of_design_example():
    assert chunk_starts(1001, 500) == [0, 333, 666]
    assert [len(c) for _, c in chunks("s", "A" * 1001, 500)] == [500, 500, 335]
    assert chunk_starts(500, 500) == [0]
    assert chunk_starts(120, 300) == [0]
    assert chunk_starts(0, 300) == []
    # The original's shift list, quirks included: 600 bp in 500-bp chunks ends short.
    assert chunk_starts(600, 500) == [0, 299]


def test_codon_table_is_the_standard_code():
    assert len(CODON_TABLE) == 64
    assert [c for c, a in CODON_TABLE.items() if a == "*"] == ["TAA", "TAG", "TGA"]
    assert CODON_TABLE["ATG"] == "M" and CODON_TABLE["TGG"] == "W" and CODON_TABLE["GCT"] == "A"


def test_ambiguous_codons_are_dropped_not_translated():
    assert translate("ATGNNNTGG", 0) == "MW"
    assert translate("ATGRYKTGGA", 0) == "MW"
    assert reverse_complement("ACGTN") == "NACGT"


def test_frames_of_lowercase_and_rna_equal_uppercase_dna():
    dna = "ATGGCTAGCAAAGGTAAACGTATTGCAGAACTG"
    assert six_frames(dna.lower()) == six_frames(dna)
    assert six_frames(dna.replace("T", "U")) == six_frames(dna)


def test_sequences_shorter_than_a_codon_keep_no_frame():
    assert six_frames("AC") == [None] * 6
    assert six_frames("") == [None] * 6


@settings(max_examples=300, deadline=None)
@given(length=st.integers(1, 3000), size=st.sampled_from([300, 500]))
def test_chunks_cover_the_sequence_in_order(length, size):
    sequence = "".join("ACGT"[(i * 7 + i // 3) % 4] for i in range(length))
    pieces = list(chunks("rec", sequence, size))
    starts = chunk_starts(length, size)
    assert len(pieces) == math.ceil(length / size)
    assert [cid for cid, _ in pieces] == [f"rec_chunk_{j}" for j in range(1, len(pieces) + 1)]
    assert starts[0] == 0 and starts == sorted(starts)
    assert all(len(c) <= size for _, c in pieces)
    assert all(c == sequence[s : s + size] for s, (_, c) in zip(starts, pieces))
    covered = set()
    for s, (_, c) in zip(starts, pieces):
        covered.update(range(s, s + len(c)))
    assert covered == set(range(length))  # every base is in some chunk
    assert starts[-1] + len(pieces[-1][1]) == length  # the last chunk ends at the end


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ACGTN", min_size=0, max_size=600))
def test_kept_frames_are_stop_free_and_sliced_like_virnucpro(chunk):
    strands = {"F": chunk, "R": reverse_complement(chunk)}
    for name, frame in zip(["F1", "F2", "F3", "R1", "R2", "R3"], six_frames(chunk)):
        k = int(name[1])
        protein = translate(strands[name[0]], k - 1)
        if frame is None:
            assert protein == "" or "*" in protein
            continue
        assert frame.name == name and frame.protein == protein
        assert "*" not in frame.protein and frame.protein
        assert frame.nucleotide == strands[name[0]][k - 1 : k + 3 * len(protein)]
        if "N" not in chunk:  # with no dropped codon the slice translates back to the protein
            assert translate(frame.nucleotide, 0) == protein
