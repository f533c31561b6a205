"""What the tests of the batch-invariant mode (repository/spec.py BATCH_INVARIANT) compare: a
repository in the mode, embedders built as serving builds them, embeddings made in several
batchings, result files byte for byte, and runs beside another client."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from inputs import STOP_FREE_CODONS
from repository_edits import set_embedding_cache
from servers import served, wait_for

from virnucpro_triton import repository as repo
from virnucpro_triton.backends.factory import embedding_backend
from virnucpro_triton.commands.predict import predict
from virnucpro_triton.export import export_repository
from virnucpro_triton.results.outputs import PREDICTIONS
from virnucpro_triton.results.run_info import RUN_INFO
from virnucpro_triton.sequence_embedders import DnaEmbedder, ProteinEmbedder
from virnucpro_triton.server import EmbeddedServer

T = TypeVar("T")
CHUNK_SIZE = 300
# The entries of a CHUNK_SIZE run that export writes in the mode.
INVARIANT_ENTRIES = (repo.DNABERT_S, repo.ESM2, repo.classifier_name(CHUNK_SIZE))
AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"


def export_invariant(repository: Path, dtype: str = "fp32") -> Path:
    """A tiny repository in the mode, its embedders' cache off: with it, a frame sent again
    would come back as first computed, whatever batch it landed in this time."""
    export_repository(
        repository, tiny=True, dtype=dtype, batch_invariant=True, report=lambda _: None
    )
    set_embedding_cache(repository, 0)
    return repository


def write_records(path: Path, count: int = 200) -> Path:
    """`count` records of one to three chunks whose frames have many token counts: the batches
    they land in differ with every way of sending them."""
    rng = random.Random(28)
    with open(path, "w") as handle:
        for i in range(count):
            sequence = "".join(rng.choices(STOP_FREE_CODONS, k=rng.randrange(20, 260)))
            handle.write(f">record_{i}\n{sequence}\n")
    return path


def served_embedder(
    repository: Path, name: str, device: torch.device, batch_invariant: bool = True
) -> DnaEmbedder | ProteinEmbedder:
    """The entry's embedder as serving/embedding.py builds it, the mode on or off."""
    version = repository / name / "1"
    config = repo.read_architecture(version)["config"]
    width = config.get("hidden_size") or config["embed_dim"]
    backend = embedding_backend(
        version, device, width, compiled_on_gpu=True, batch_invariant=batch_invariant
    )
    if name == repo.DNABERT_S:
        return DnaEmbedder(backend, version / repo.TOKENIZER, batch_invariant=batch_invariant)
    return ProteinEmbedder(backend, batch_invariant=batch_invariant)


def random_sequences(name: str, count: int) -> list[str]:
    """DNA (for DNABERT-S) or protein (ESM-2) of lengths that spread over many widths."""
    rng = random.Random(28)
    letters, longest = ("ACGT", 400) if name == repo.DNABERT_S else (AMINO_ACIDS, 150)
    return ["".join(rng.choices(letters, k=rng.randrange(1, longest))) for _ in range(count)]


def embedded_in_batchings(
    embed: Callable[[list[str]], np.ndarray], sequences: list[str], alone: list[int]
) -> dict[str, np.ndarray]:
    """Each sequence's vector embedded in the whole set, the set shuffled, and in two parts of
    other sizes; and the sequences `alone` (indices), each in a request of its own."""
    order = random.Random(3).sample(range(len(sequences)), len(sequences))
    whole = embed(sequences)
    shuffled = np.empty_like(whole)
    shuffled[order] = embed([sequences[i] for i in order])
    third = len(sequences) // 3
    return {
        "whole": whole,
        "shuffled": shuffled,
        "parts": np.concatenate([embed(sequences[:third]), embed(sequences[third:])]),
        "alone": np.stack([embed([sequences[i]])[0] for i in alone]),
    }


def rows_differing(a: np.ndarray, b: np.ndarray) -> int:
    """Rows whose bytes differ."""
    return sum(x.tobytes() != y.tobytes() for x, y in zip(a, b, strict=True))


def differing_from_whole(batchings: dict[str, np.ndarray], alone: list[int]) -> dict[str, int]:
    """Per batching of embedded_in_batchings, the rows whose bytes differ from the whole's."""
    whole = batchings["whole"]
    return {
        way: rows_differing(whole[alone] if way == "alone" else whole, vectors)
        for way, vectors in batchings.items()
        if way != "whole"
    }


def assert_same_results(expected: Path, out: Path) -> None:
    """Every result file equal byte for byte, run.json (times, ports) apart, which records the
    mode for the entries that compute."""
    names = sorted(p.name for p in expected.iterdir())
    assert sorted(p.name for p in out.iterdir()) == names
    assert PREDICTIONS in names
    for name in names:
        if name != RUN_INFO:
            assert (out / name).read_bytes() == (expected / name).read_bytes(), name
    models = json.loads((out / RUN_INFO).read_text())["models"]
    found = {name: models[name].get(repo.BATCH_INVARIANT) for name in INVARIANT_ENTRIES}
    assert found == dict.fromkeys(INVARIANT_ENTRIES, True), found


def beside_another_client(
    server: EmbeddedServer, other: Path, run: Callable[[], T]
) -> tuple[T, int]:
    """`run()` while another client sends `other` (a FASTA) to `server` in small requests, one
    run after another, from before `run` starts until it has ended; with the number of requests
    that the server answered during `run`, its own and the other client's."""
    done = threading.Event()

    def other_client() -> int:
        runs, out = 0, other.with_name(f"{other.stem}_results")
        while not done.is_set():
            predict(other, CHUNK_SIZE, out, server.grpc_url, batch_chunks=2, progress=False)
            runs += 1
        return runs

    before = served(server)
    with ThreadPoolExecutor(1) as pool:
        concurrent = pool.submit(other_client)
        try:
            # `run` starts once the other client has an answer, and that client goes on until
            # `run` has ended: they overlap from start to end.
            wait_for(lambda: served(server) > before or concurrent.done())
            assert not concurrent.done(), concurrent.exception()
            started = served(server)
            result = run()
            answered = served(server) - started
        finally:
            done.set()
        assert concurrent.result(timeout=120) >= 1
    return result, answered
