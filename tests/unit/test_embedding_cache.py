"""The embedders' cache of embeddings: each distinct frame embedded once, same outputs."""

from __future__ import annotations

import random
import shutil
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from Bio import SeqIO

from virnucpro_triton import repository as repo
from virnucpro_triton.bench import add_duplicates, make_workload, set_embedding_cache
from virnucpro_triton.sequence import reverse_complement, six_frames
from virnucpro_triton.server import EmbeddedServer
from virnucpro_triton.serving.embedding_cache import (
    ENTRY_OVERHEAD,
    EmbeddingCache,
    cache_bytes_of,
    read_cache_metrics,
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

STOPS = {"TAA", "TAG", "TGA"}
CODONS = [a + b + c for a in "ACGT" for b in "ACGT" for c in "ACGT" if a + b + c not in STOPS]


@pytest.fixture(scope="module")
def uncached_server(tiny_repository, tmp_path_factory):
    repository = tmp_path_factory.mktemp("uncached") / "repository"
    shutil.copytree(tiny_repository, repository)
    set_embedding_cache(repository, 0)
    with EmbeddedServer(repository) as running:
        yield running


def reads(seed: int, count: int) -> list[str]:
    """Stop-free in several frames, of one chunk each (the reverse complement's chunk is the
    read's reverse complement)."""
    rng = random.Random(seed)
    return ["".join(rng.choices(CODONS, k=rng.randrange(40, 100))) for _ in range(count)]


def pipeline(server: EmbeddedServer, chunks: list[str]) -> dict[str, np.ndarray]:
    dna = grpcclient.InferInput("DNA", [len(chunks), 1], "BYTES")
    dna.set_data_from_numpy(np.array(chunks, dtype=object).reshape(-1, 1))
    size = grpcclient.InferInput("CHUNK_SIZE", [len(chunks), 1], "INT32")
    size.set_data_from_numpy(np.full((len(chunks), 1), 300, np.int32))
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        result = client.infer(repo.PIPELINE, [dna, size])
    return {name: result.as_numpy(name) for name in ("PROBABILITIES", "FRAME_KEPT")}


def cache_counts(server: EmbeddedServer) -> dict[str, dict[str, float]]:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as page:
        return read_cache_metrics(page.read().decode())


def embedder_rows(chunks: list[str]) -> dict[str, list[str]]:
    frames = [f for chunk in chunks for f in six_frames(chunk) if f is not None]
    return {repo.DNABERT_S: [f.nucleotide for f in frames], repo.ESM2: [f.protein for f in frames]}


def test_duplicates_and_reverse_complements_are_embedded_once_with_the_same_outputs(
    server, uncached_server
):
    a, b, c, d = reads(seed=1707, count=4)
    # Within a request: an exact copy and reverse complements, between reads seen once.
    first = [a, b, reverse_complement(a), c, a, reverse_complement(b)]
    # Across requests: only d is new.
    second = [reverse_complement(c), d, b, reverse_complement(d)]
    before = cache_counts(server)
    cached = [pipeline(server, first), pipeline(server, second)]
    after = cache_counts(server)
    uncached = [pipeline(uncached_server, first), pipeline(uncached_server, second)]

    for with_cache, without in zip(cached, uncached, strict=True):
        np.testing.assert_array_equal(with_cache["FRAME_KEPT"], without["FRAME_KEPT"])
        np.testing.assert_allclose(
            with_cache["PROBABILITIES"], without["PROBABILITIES"], rtol=0, atol=1e-6
        )
    # A read's reverse complement has its frames with F and R swapped: the same answers.
    probabilities = cached[0]["PROBABILITIES"]
    np.testing.assert_allclose(probabilities[2], probabilities[0][[3, 4, 5, 0, 1, 2]], atol=1e-6)
    np.testing.assert_allclose(probabilities[4], probabilities[0], atol=1e-6)

    for model, rows in embedder_rows(first + second).items():
        distinct = len(set(rows))
        assert distinct <= len(rows) / 2  # the inputs above repeat every frame at least twice
        counted = {k: after[model][k] - before.get(model, {}).get(k, 0) for k in after[model]}
        assert (counted["hits"], counted["misses"]) == (len(rows) - distinct, distinct), model
        assert 0 < after[model]["bytes"] <= repo.EMBEDDING_CACHE_BYTES
    assert cache_counts(uncached_server) == {}  # off: no cache, no metrics
