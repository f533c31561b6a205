"""A batch-invariant repository (repository/spec.py BATCH_INVARIANT) served by real tritonservers:
the same input gives result files equal byte for byte whatever --batch-chunks, whatever another
client sends meanwhile, on another server, and when a stopped run is resumed.

The embedders' cache is off: with it, a repeated frame would come back from the first run's
answer, and the comparisons would not see how the second run's batches were formed. Their
batches hold few rows: the mode runs every batch at its full number of rows, whatever it
holds, and at the exported number a CPU would spend these runs on the copies filling small
requests' batches. Fewer rows also split the frames of a width over more batches."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from inputs import STOP_FREE_CODONS, reads
from reference import in_process, read_rows
from repository_edits import set_embedder_parameter, set_embedding_cache
from servers import Hold, served, wait_for

from virnucpro_triton import repository as repo
from virnucpro_triton.client.classify import BATCH_CHUNKS
from virnucpro_triton.commands.predict import predict
from virnucpro_triton.export import export_repository
from virnucpro_triton.results.journal import NAME as JOURNAL
from virnucpro_triton.results.outputs import PREDICTIONS
from virnucpro_triton.results.run_info import RUN_INFO
from virnucpro_triton.server import EmbeddedServer

CHUNK_SIZE = 300
CLI = str(Path(sys.executable).parent / "virnucpro-triton")
MAX_ROWS = 8  # the embedders' rows per batch (the module's docstring says why)
INVARIANT_ENTRIES = (repo.DNABERT_S, repo.ESM2, repo.classifier_name(CHUNK_SIZE))


@pytest.fixture(scope="module")
def invariant_repository(tmp_path_factory) -> Path:
    repository = tmp_path_factory.mktemp("invariant") / "repository"
    export_repository(repository, tiny=True, batch_invariant=True, report=lambda _: None)
    set_embedding_cache(repository, 0)
    set_embedder_parameter(repository, repo.MAX_ROWS_KEY, str(MAX_ROWS))
    return repository


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> Path:
    """A few hundred records of one to three chunks, whose frames have many token counts: the
    batches they land in differ with every way of sending them."""
    rng = random.Random(28)
    path = tmp_path_factory.mktemp("records") / "records.fa"
    with open(path, "w") as handle:
        for i in range(200):
            sequence = "".join(rng.choices(STOP_FREE_CODONS, k=rng.randrange(20, 260)))
            handle.write(f">record_{i}\n{sequence}\n")
    return path


@pytest.fixture(scope="module")
def invariant_server(invariant_repository, tmp_path_factory) -> Iterator[EmbeddedServer]:
    log = tmp_path_factory.mktemp("invariant_server") / "tritonserver.log"
    with EmbeddedServer(invariant_repository, log_path=log) as running:
        yield running


@pytest.fixture(scope="module")
def invariant_hold(invariant_repository, tmp_path_factory) -> Hold:
    return Hold(invariant_repository, tmp_path_factory.mktemp("invariant_hold"))


@pytest.fixture(scope="module")
def second_server(invariant_hold, tmp_path_factory) -> Iterator[EmbeddedServer]:
    """Another server of the same entries, whose classifier_300 holds requests on the test's
    word (servers.Hold) and otherwise computes as the first's."""
    log = tmp_path_factory.mktemp("second_server") / "tritonserver.log"
    with EmbeddedServer(invariant_hold.repository, log_path=log) as running:
        yield running


@pytest.fixture(scope="module")
def expected(invariant_server, records, tmp_path_factory) -> Path:
    """The result files of the whole input in one request."""
    out = tmp_path_factory.mktemp("expected")
    predict(records, CHUNK_SIZE, out, invariant_server.grpc_url, batch_chunks=512, progress=False)
    return out


def assert_same_files(expected: Path, out: Path) -> None:
    """Every result file equal byte for byte; run.json (times, ports) apart."""
    names = sorted(p.name for p in expected.iterdir())
    assert sorted(p.name for p in out.iterdir()) == names
    assert PREDICTIONS in names
    for name in names:
        if name != RUN_INFO:
            assert (out / name).read_bytes() == (expected / name).read_bytes(), name


def test_the_mode_is_served_recorded_and_within_the_reference_models(
    invariant_server, invariant_repository, records, expected
):
    models = json.loads((expected / RUN_INFO).read_text())["models"]
    assert {name: models[name]["batch_invariant"] for name in INVARIANT_ENTRIES} == dict.fromkeys(
        INVARIANT_ENTRIES, True
    )
    log = invariant_server.log_text()
    for name in INVARIANT_ENTRIES:
        lines = [line for line in log.splitlines() if f"virnucpro-triton: loaded {name} " in line]
        assert lines and all("batch-invariant" in line for line in lines), lines
    rows = read_rows(expected)
    reference = in_process(invariant_repository, records.read_text(), CHUNK_SIZE)
    assert rows.keys() == reference.keys() and len(rows) > 300
    assert max(np.abs(np.array(rows[k][1:]) - reference[k]).max() for k in rows) <= 1e-5


@pytest.mark.parametrize("batch_chunks", [pytest.param(1, marks=pytest.mark.slow), 7])
def test_batch_chunks_leave_the_results_unchanged(
    invariant_server, records, expected, tmp_path, batch_chunks
):
    url = invariant_server.grpc_url
    predict(records, CHUNK_SIZE, tmp_path, url, batch_chunks=batch_chunks, progress=False)
    assert_same_files(expected, tmp_path)


def other_client(url: str, fasta: Path, out: Path, done: threading.Event) -> int:
    """Runs of `fasta` in small requests, one after another until `done`; how many ran."""
    runs = 0
    while not done.is_set():
        predict(fasta, CHUNK_SIZE, out, url, batch_chunks=2, max_in_flight=2, progress=False)
        runs += 1
    return runs


def test_a_concurrent_client_leaves_the_results_unchanged(
    invariant_server, records, expected, tmp_path
):
    other = tmp_path / "other.fa"
    other.write_text("".join(f">other_{i}\n{read}\n" for i, read in enumerate(reads(11, 8))))
    done = threading.Event()
    before = served(invariant_server)
    url = invariant_server.grpc_url
    with ThreadPoolExecutor(1) as pool:
        concurrent = pool.submit(other_client, url, other, tmp_path / "other", done)
        try:
            # The run starts once the other client has an answer, and that client goes on
            # until the run has ended: they overlap from start to end.
            wait_for(lambda: served(invariant_server) > before or concurrent.done())
            assert not concurrent.done(), concurrent.exception()
            started = served(invariant_server)
            out = tmp_path / "out"
            summary = predict(records, CHUNK_SIZE, out, url, progress=False)
            answered = served(invariant_server) - started
        finally:
            done.set()
        assert concurrent.result(timeout=120) >= 1
    own = -(-summary.chunks // BATCH_CHUNKS)
    assert answered > own  # the other client's requests were answered during this run
    assert_same_files(expected, out)


@pytest.mark.slow  # a server of its own
def test_a_second_server_gives_the_same_results(second_server, records, expected, tmp_path):
    predict(records, CHUNK_SIZE, tmp_path, second_server.grpc_url, progress=False)
    assert_same_files(expected, tmp_path)


@pytest.mark.slow  # the second server
def test_a_resumed_run_gives_the_same_results(
    invariant_server, second_server, invariant_hold, records, expected, tmp_path
):
    # `predict` one chunk per request on the second server, stopped while its 6th is held;
    # resumed on the first server with other requests.
    with invariant_hold.holding(after=5):
        args = [CLI, "predict", records, "--chunk-size", str(CHUNK_SIZE), "-o", tmp_path]
        args += ["--url", second_server.grpc_url, "--batch-chunks", "1", "--max-in-flight", "1"]
        process = subprocess.Popen(
            list(map(str, args)), stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        try:
            invariant_hold.wait_held()
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert (tmp_path / JOURNAL).exists() and not (tmp_path / PREDICTIONS).exists()
    summary = predict(
        records, CHUNK_SIZE, tmp_path, invariant_server.grpc_url, resume=True, progress=False
    )
    assert summary.resumed_chunks == 5
    assert_same_files(expected, tmp_path)
