"""The embedding cache in a real server: duplicates and reverse complements embedded once,
with the same outputs."""

from __future__ import annotations

import shutil
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from inputs import reads
from repository_edits import set_embedding_cache

from virnucpro_triton import repository as repo
from virnucpro_triton.sequence import reverse_complement, six_frames
from virnucpro_triton.server import EmbeddedServer
from virnucpro_triton.serving.embedding_cache import read_cache_metrics


@pytest.fixture(scope="module")
def uncached_server(tiny_repository, tmp_path_factory):
    repository = tmp_path_factory.mktemp("uncached") / "repository"
    shutil.copytree(tiny_repository, repository)
    set_embedding_cache(repository, 0)
    with EmbeddedServer(repository) as running:
        yield running


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
