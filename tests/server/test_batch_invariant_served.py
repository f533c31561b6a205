"""A batch-invariant repository (repository/spec.py BATCH_INVARIANT) served by real tritonservers:
the same input gives result files equal byte for byte whatever --batch-chunks, whatever another
client sends meanwhile, on another server, and when a stopped run is resumed.

The embedders' batches hold few rows here: the mode runs every batch at its full number of
rows, whatever it holds, and at the exported number a CPU would spend these runs on the copies
that fill small requests' batches. Fewer rows also split the frames of a width over more
batches."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from inputs import reads
from invariance import (
    CHUNK_SIZE,
    INVARIANT_ENTRIES,
    assert_same_results,
    beside_another_client,
    export_invariant,
    write_records,
)
from reference import read_rows, worst_difference
from repository_edits import set_parameter
from servers import Hold

from virnucpro_triton import repository as repo
from virnucpro_triton.client.classify import BATCH_CHUNKS
from virnucpro_triton.commands.predict import predict
from virnucpro_triton.results.journal import NAME as JOURNAL
from virnucpro_triton.results.outputs import PREDICTIONS
from virnucpro_triton.server import EmbeddedServer

CLI = str(Path(sys.executable).parent / "virnucpro-triton")
MAX_ROWS = 8  # the embedders' rows per batch (the module's docstring says why)


@pytest.fixture(scope="module")
def invariant_repository(tmp_path_factory) -> Path:
    repository = export_invariant(tmp_path_factory.mktemp("invariant") / "repository")
    set_parameter(repository, repo.MAX_ROWS_KEY, str(MAX_ROWS))
    return repository


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> Path:
    return write_records(tmp_path_factory.mktemp("records") / "records.fa")


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


def test_the_mode_is_served_and_within_the_reference_models(
    invariant_server, invariant_repository, records, expected
):
    log = invariant_server.log_text()
    for name in INVARIANT_ENTRIES:
        lines = [line for line in log.splitlines() if f"virnucpro-triton: loaded {name} " in line]
        assert lines and all("batch-invariant" in line for line in lines), lines
    assert len(read_rows(expected)) > 300
    assert worst_difference(expected, invariant_repository, records.read_text(), CHUNK_SIZE) <= 1e-5


@pytest.mark.parametrize("batch_chunks", [pytest.param(1, marks=pytest.mark.slow), 7])
def test_batch_chunks_leave_the_results_unchanged(
    invariant_server, records, expected, tmp_path, batch_chunks
):
    url = invariant_server.grpc_url
    predict(records, CHUNK_SIZE, tmp_path, url, batch_chunks=batch_chunks, progress=False)
    assert_same_results(expected, tmp_path)


def test_a_concurrent_client_leaves_the_results_unchanged(
    invariant_server, records, expected, tmp_path
):
    other = tmp_path / "other.fa"
    other.write_text("".join(f">other_{i}\n{read}\n" for i, read in enumerate(reads(11, 8))))
    out = tmp_path / "out"
    summary, answered = beside_another_client(
        invariant_server,
        other,
        lambda: predict(records, CHUNK_SIZE, out, invariant_server.grpc_url, progress=False),
    )
    assert answered > -(-summary.chunks // BATCH_CHUNKS)  # the run's own and the other's
    assert_same_results(expected, out)


@pytest.mark.slow  # a server of its own
def test_a_second_server_gives_the_same_results(second_server, records, expected, tmp_path):
    predict(records, CHUNK_SIZE, tmp_path, second_server.grpc_url, progress=False)
    assert_same_results(expected, tmp_path)


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
    url = invariant_server.grpc_url
    summary = predict(records, CHUNK_SIZE, tmp_path, url, resume=True, progress=False)
    assert summary.resumed_chunks == 5
    assert_same_results(expected, tmp_path)
