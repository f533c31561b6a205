"""The embedders' cache of embeddings: each distinct frame embedded once, same outputs."""

from __future__ import annotations

import numpy as np
import pytest

from virnucpro_triton import repository as repo
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
    with pytest.raises(ValueError, match=f"embedding_cache_bytes must be .* not {value!r}"):
        cache_bytes_of(value)


def test_a_cache_size_is_its_bytes_and_0_is_off():
    assert (cache_bytes_of("0"), cache_bytes_of(str(repo.EMBEDDING_CACHE_BYTES))) == (0, 1 << 30)


# Served: the tiny models on a real tritonserver, cache on (the export default) and off.
