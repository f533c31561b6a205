"""Server faults during a run, against real tritonservers (no mocks): restarts are ridden out,
a server that stays away ends the run with a clear error and no output files. Each fault comes
while the server holds a request of the run (servers.Hold), so the run is still going."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from servers import STOPPING, served, wait_for

from virnucpro_triton.client.connection import (
    RETRY_SECONDS,
    ClientError,
    Connection,
    text_column,
)
from virnucpro_triton.commands.predict import predict
from virnucpro_triton.repository import PIPELINE
from virnucpro_triton.results.journal import NAME as JOURNAL
from virnucpro_triton.results.outputs import PREDICTIONS, SUMMARY, VERDICTS, VIRUSES
from virnucpro_triton.results.run_info import RUN_INFO
from virnucpro_triton.server import EmbeddedServer

# One request in flight: the server then batches exactly one request at a time, so the
# results are byte-identical between runs (batches mixed from several requests differ in the
# last float32 digit: padding changes the shapes the matrix products run in).
SETTINGS = dict(batch_chunks=4, max_in_flight=1, progress=False)


@pytest.fixture(scope="module")
def fixed_server(hold, tmp_path_factory) -> Iterator[EmbeddedServer]:
    """A server the tests stop and start again: every start binds the same ports."""
    log = tmp_path_factory.mktemp("fixed_server") / "tritonserver.log"
    with EmbeddedServer(hold.repository, log_path=log) as running:
        yield running


def test_run_survives_a_server_restart(server, fixed_server, hold, contigs, tmp_path):
    reference, out = tmp_path / "reference", tmp_path / "out"
    stops = fixed_server.log_text().count(STOPPING)
    # The run's 11th request is held: mid-run, not before it began.
    with ThreadPoolExecutor(3) as pool, hold.holding(after=10):
        # The uninterrupted run, against the session's server, goes on meanwhile.
        uninterrupted = pool.submit(predict, contigs, 300, reference, server.grpc_url, **SETTINGS)
        run = pool.submit(predict, contigs, 300, out, fixed_server.grpc_url, **SETTINGS)
        hold.wait_held()
        # Graceful: the held request finishes, new ones are refused.
        stopping = pool.submit(fixed_server.stop)
        wait_for(lambda: fixed_server.log_text().count(STOPPING) > stops)
        hold.release()
        stopping.result()
        assert not run.done(), run.exception()
        fixed_server.start()  # a new tritonserver process on the same ports, seconds later
        summary = run.result(timeout=RETRY_SECONDS)
        uninterrupted.result()
    assert summary.retries >= 1  # requests met the stopped server and were sent again
    assert served(fixed_server) > 0  # the run went on against the new process
    for name in [PREDICTIONS, VERDICTS, SUMMARY]:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert {p.name for p in out.iterdir()} == {PREDICTIONS, VERDICTS, SUMMARY, VIRUSES, RUN_INFO}


def test_server_that_stays_away_ends_the_run_within_the_retry_window(
    fixed_server, hold, contigs, tmp_path
):
    out = tmp_path / "out"
    with ThreadPoolExecutor(1) as pool, hold.holding(after=5):
        settings = {**SETTINGS, "max_in_flight": 4}  # several requests retrying at once
        run = pool.submit(
            predict, contigs, 300, out, fixed_server.grpc_url, retry_seconds=4, **settings
        )
        hold.wait_held()
        stopped = time.monotonic()
        fixed_server.stop(timeout=0)  # killed with a request of the run: it never comes back
        hold.release()
        with pytest.raises(ClientError) as error:
            run.result(timeout=RETRY_SECONDS)  # the default window would have run out here
        waited = time.monotonic() - stopped
    assert waited >= 4, (waited, error.value)  # not before its own window ran out
    message = str(error.value)
    assert "\n" not in message
    assert f"gave up on the Triton server at {fixed_server.grpc_url}" in message
    assert "--retry-seconds 4" in message
    # No complete-looking or partial result file; the journal stays for --resume.
    assert [p.name for p in out.iterdir()] == [JOURNAL]


def test_a_bad_request_fails_at_once_without_retries(server):
    connection = Connection(server.grpc_url, PIPELINE, retry_seconds=60)
    try:
        inputs = {"DNA": text_column(["AC!GT"]), "CHUNK_SIZE": np.full((1, 1), 300, np.int32)}
        future = connection.submit(inputs, ["PROBABILITIES"])
        with pytest.raises(ClientError, match=r"refused a 'virnucpro' request: .*'!'"):
            future.result(timeout=30)  # half the retry window: a retried request is not back
        (endpoint,) = connection.stats
        assert endpoint.failed == 0  # refused once, and not sent again
    finally:
        connection.close()
