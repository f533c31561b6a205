"""The embedders' cache of embeddings: each distinct frame embedded once, same outputs."""

from __future__ import annotations

import numpy as np
import pytest
from Bio import SeqIO

from virnucpro_triton import repository as repo
from virnucpro_triton.bench import add_duplicates, make_workload
from virnucpro_triton.sequence import reverse_complement
from virnucpro_triton.serving.embedding_cache import (
    ENTRY_OVERHEAD,
    EmbeddingCache,
    cache_bytes_of,
)


def vector_of(sequence: str) -> np.ndarray:
    """A stand-in embedding that differs for every sequence."""
    seed = int.from_bytes(sequence.encode()[:8].ljust(8, b"\0"), "little") + len(sequence)
    return np.random.default_rng(seed).random(4, dtype=np.float32)


class Counting:
    """compute() for the cache: records what it was asked to embed."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, sequences: list[str]) -> np.ndarray:
        self.calls.append(list(sequences))
        return np.stack([vector_of(s) for s in sequences]).reshape(len(sequences), 4)


def test_each_distinct_sequence_is_computed_once_within_and_across_calls():
    cache, compute = EmbeddingCache(1 << 20), Counting()
    first = ["ACGT", "TTGA", "ACGT", "CCCA", "TTGA"]
    out = cache.embed(first, compute)
    np.testing.assert_array_equal(out, np.stack([vector_of(s) for s in first]))
    assert compute.calls == [["ACGT", "TTGA", "CCCA"]]
    second = ["CCCA", "GGGG", "ACGT"]
    np.testing.assert_array_equal(
        cache.embed(second, compute), np.stack([vector_of(s) for s in second])
    )
    assert compute.calls[1] == ["GGGG"]
    assert (cache.hits, cache.misses) == (4, 4)
    assert len(cache.embed(["ACGT"], compute)) == 1 and len(compute.calls) == 2


def test_off_computes_every_row_as_before():
    cache, compute = EmbeddingCache(0), Counting()
    cache.embed(["AC", "AC", "GT"], compute)
    cache.embed(["AC"], compute)
    assert compute.calls == [["AC", "AC", "GT"], ["AC"]]
    assert len(cache) == 0 and (cache.hits, cache.misses) == (0, 0)


def test_least_recently_used_leave_first_and_the_bytes_stay_within_the_limit():
    entry = 4 + 16 + ENTRY_OVERHEAD  # 4 letters, 4 float32
    cache, compute = EmbeddingCache(2 * entry), Counting()
    cache.embed(["AAAA", "CCCC"], compute)
    cache.embed(["AAAA"], compute)  # AAAA is now the most recently used
    cache.embed(["GGGG"], compute)  # CCCC leaves
    assert cache.bytes_held == 2 * entry and len(cache) == 2
    compute.calls.clear()
    out = cache.embed(["AAAA", "GGGG", "CCCC"], compute)
    assert compute.calls == [["CCCC"]]
    np.testing.assert_array_equal(out[2], vector_of("CCCC"))
    assert cache.bytes_held <= 2 * entry


def test_a_vector_larger_than_the_cache_is_computed_and_not_kept():
    cache, compute = EmbeddingCache(ENTRY_OVERHEAD), Counting()
    cache.embed(["ACGT"], compute)
    cache.embed(["ACGT"], compute)
    assert len(compute.calls) == 2 and cache.bytes_held == 0


@pytest.mark.parametrize("value", ["-1", "1GB", ""])
def test_a_bad_cache_size_is_named(value):
    config = {"parameters": {repo.EMBEDDING_CACHE_PARAMETER: {"string_value": value}}}
    with pytest.raises(ValueError, match=f"embedding_cache_bytes must be .* not {value!r}"):
        cache_bytes_of(config)


def test_entries_exported_without_the_parameter_have_the_cache_off():
    assert cache_bytes_of({"parameters": {"fp8": {"string_value": "none"}}}) == 0


def test_the_bench_adds_the_share_of_copies_asked_half_of_them_reverse_complements(tmp_path):
    source, target = tmp_path / "reads.fa", tmp_path / "copies.fa"
    unique_frames = make_workload(source, 300, 300, seed=3, lengths=(150, 301))
    originals = {str(r.seq) for r in SeqIO.parse(source, "fasta")}
    reads, frames = add_duplicates(source, target, 0.3, 300)
    records = list(SeqIO.parse(target, "fasta"))
    copies = [str(r.seq) for r in records if "_copy" in r.id]
    assert reads == len(records) == len(originals) + len(copies)
    assert abs(len(copies) / reads - 0.3) < 0.01
    exact = sum(c in originals for c in copies)
    reverse = sum(reverse_complement(c) in originals and c not in originals for c in copies)
    assert exact + reverse == len(copies) and abs(exact - reverse) <= 1
    assert frames > len(unique_frames)
    assert len({r.id for r in records}) == reads  # copies have ids of their own


# Served: the tiny models on a real tritonserver, cache on (the export default) and off.
