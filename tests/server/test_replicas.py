"""Replicas behind one name, against real tritonservers: every address a name resolves to is a
server, names are resolved again as replicas come and go, servers still starting are waited
for, and addresses are checked as typed.

The replicas listen on one gRPC port, each on its own loopback address (Linux routes all of
127.0.0.0/8 to lo), as the pods behind a Kubernetes headless Service share one port. Each
server computes one request at a time here, so results are byte-identical between runs.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from servers import ensure_running, served, wait_for

from virnucpro_triton.client.classify import Classifier
from virnucpro_triton.client.connection import Connection
from virnucpro_triton.commands.predict import predict
from virnucpro_triton.fasta import read_fasta
from virnucpro_triton.processes import free_port
from virnucpro_triton.repository import PIPELINE
from virnucpro_triton.results.outputs import PREDICTIONS, SUMMARY, VERDICTS
from virnucpro_triton.sequence import chunk_starts
from virnucpro_triton.server import EmbeddedServer

# Three servers started and stopped, a run fed until replicas come and go: make test-slow.
pytestmark = pytest.mark.slow

CLI = Path(sys.executable).with_name("virnucpro-triton")
NAME = "replicas.test"  # the name every test resolves, as a cluster's DNS would
BATCH = 4  # chunks per request
RESULTS = (PREDICTIONS, VERDICTS, SUMMARY)


@pytest.fixture(scope="module")
def port() -> int:
    """The gRPC port of every replica."""
    return free_port()


def replica(repository: Path, address: str, port: int, tmp_path_factory) -> EmbeddedServer:
    log = tmp_path_factory.mktemp(f"replica-{address}") / "tritonserver.log"
    return EmbeddedServer(repository, address=address, grpc_port=port, log_path=log)


@pytest.fixture(scope="module")
def replica_a(tiny_repository, port, tmp_path_factory):
    with replica(tiny_repository, "127.0.0.2", port, tmp_path_factory) as running:
        yield running


@pytest.fixture(scope="module")
def replica_b(tiny_repository, port, tmp_path_factory):
    with replica(tiny_repository, "127.0.0.3", port, tmp_path_factory) as running:
        yield running


@pytest.fixture(scope="module")
def replica_c(tiny_repository, port, tmp_path_factory):
    """Not started: one test starts it while a client waits for it, another while a run is
    going on (`ensure_running`); it then stays up for the module."""
    server = replica(tiny_repository, "127.0.0.4", port, tmp_path_factory)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def records(contigs) -> list[tuple[str, str]]:
    """The contigs up to where their chunks fill whole requests (~300 chunks, ~75 requests):
    a run of them again and again (`rounds`) is batched the same way each time."""
    kept, chunks = [], 0
    for record in read_fasta(contigs):
        kept.append((record.id, record.sequence))
        chunks += len(chunk_starts(len(record.sequence), 300))
        if chunks % BATCH == 0:
            whole = list(kept)
    return whole


def rounds(records: list[tuple[str, str]], until: threading.Event):
    """`records` again and again, with ids of their own each round, until `until` is set after
    a round: a run goes on until the test has seen what it waits for, on a fast machine as on
    a slow one."""
    for n in itertools.count():
        yield from ((f"round{n}_{id_}", sequence) for id_, sequence in records)
        if until.is_set():
            return


def classify(urls, records, **options):
    """(results, endpoint stats) of one Classifier run; a classifier made in the loop is
    handed to `options.pop("seen")` (a list) so that a test can watch it."""
    seen = options.pop("seen", [])

    async def run():
        async with Classifier(urls, 300, batch_chunks=BATCH, **options) as classifier:
            seen.append(classifier)
            return [r async for r in classifier.classify(records)], classifier.stats

    return asyncio.run(run())


def answers(results, without_round=False) -> bytes:
    """Everything a run answered, as bytes: ids (without `rounds`' prefix if asked),
    per-frame probabilities, kept frames."""
    ids = (r.id.split("_", 1)[1] if without_round else r.id for r in results)
    return b"".join(
        id_.encode() + r.probabilities.tobytes() + r.kept.tobytes() for id_, r in zip(ids, results)
    )


def requests_of(results) -> int:
    return -(-sum(len(r.kept) for r in results) // BATCH)


@pytest.fixture(scope="module")
def reference(replica_a, records):
    """The single-server run the replicated runs must reproduce, byte for byte."""
    results, _ = classify(replica_a.grpc_url, records, max_in_flight=1)
    assert sum(len(r.kept) for r in results) % BATCH == 0  # whole requests: see `records`
    return answers(results)


def resolver(table: dict[str, list[str]]):
    """A resolver the test points at its servers: `table` may change during a run."""
    return lambda host, port: list(table[host])


# --- addresses as typed ----------------------------------------------------------------------


# --- waiting for servers that are starting ---------------------------------------------------


def test_predict_waits_for_a_server_still_starting(replica_a, replica_c, mixed_fasta, tmp_path):
    expected = tmp_path / "expected"
    settings = ["--batch-chunks", str(BATCH), "--max-in-flight", "1"]
    predict(mixed_fasta, 300, expected, replica_a.grpc_url, batch_chunks=BATCH, max_in_flight=1)
    replica_c.stop()  # down, as `serve` is in its first seconds (a no-op unless a test left it up)
    out, stderr = tmp_path / "out", tmp_path / "stderr.txt"
    command = [str(CLI), "predict", str(mixed_fasta), "--chunk-size", "300", "-o", str(out)]
    command += ["--url", replica_c.grpc_url, "--retry-seconds", "900", *settings]
    with open(stderr, "w") as err:
        client = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err)
    try:
        wait_for(lambda: "waiting" in stderr.read_text() or client.poll() is not None)
        assert client.poll() is None, stderr.read_text()  # refused connections: still waiting
        replica_c.start()
        assert client.wait(timeout=300) == 0, stderr.read_text()
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    (line,) = stderr.read_text().splitlines()  # said once, nothing else
    assert line.startswith("virnucpro-triton: waiting up to 900 s for the Triton server at ")
    assert f"at {replica_c.grpc_url} to be ready" in line and "Connection refused" in line
    for name in RESULTS:
        assert (out / name).read_bytes() == (expected / name).read_bytes(), name


# --- one name, several replicas --------------------------------------------------------------


def test_one_name_resolving_to_two_replicas_spreads_the_work(
    replica_a, replica_b, port, records, reference
):
    table = {NAME: ["127.0.0.2", "127.0.0.3"]}
    before = served(replica_a), served(replica_b)
    results, stats = classify(f"{NAME}:{port}", records, max_in_flight=2, resolve=resolver(table))
    assert answers(results) == reference
    by_url = {s.url: s for s in stats}
    assert sorted(by_url) == sorted([replica_a.grpc_url, replica_b.grpc_url])
    assert {s.name for s in stats} == {f"{NAME}:{port}"}
    got = served(replica_a) - before[0], served(replica_b) - before[1]
    assert got[0] > 0 and got[1] > 0  # both answered
    assert (by_url[replica_a.grpc_url].answered, by_url[replica_b.grpc_url].answered) == got
    assert sum(got) == requests_of(results)  # each request answered once
    # The default number of requests in flight follows the servers a name stands for.
    classifier = Classifier(f"{NAME}:{port}", 300, resolve=resolver(table))
    try:
        assert classifier.max_in_flight == 8
    finally:
        classifier.close()


def test_only_addresses_on_their_own_are_warned_about(replica_a, port, caplog):
    """A name with one address that answers (localhost's 127.0.0.1 beside its ::1) starts
    quietly; an address given on its own that does not answer, or a name that does not resolve,
    is named on stderr; all are probed on."""
    table = {NAME: ["127.0.0.2", "127.0.0.9"], "gone.test": []}  # nothing listens on .9
    with caplog.at_level(logging.WARNING, "virnucpro_triton.client"):
        quiet = Connection(f"{NAME}:{port}", PIPELINE, resolve=resolver(table))
        quiet.close()
        assert caplog.messages == []
        loud = Connection(
            [f"127.0.0.2:{port}", f"127.0.0.9:{port}", f"gone.test:{port}"],
            PIPELINE,
            resolve=lambda host, port: table.get(host, [host]),
        )
        loud.close()
    assert [s.url for s in quiet.stats] == [replica_a.grpc_url, f"127.0.0.9:{port}"]
    assert quiet.stats[1].outages == 1 and quiet.servers == 2
    resolving, probing = caplog.messages
    assert resolving == "gone.test resolves to no address; resolving it again every 30 s"
    assert probing.startswith(f"cannot reach a Triton server at 127.0.0.9:{port}: ")
    assert probing.endswith("; probing it until it is ready")


def test_a_replica_that_appears_gets_work_and_one_that_vanishes_leaves(
    replica_a, replica_b, replica_c, port, records, reference
):
    ensure_running(replica_c)
    table = {NAME: ["127.0.0.2", "127.0.0.3"]}
    servers = replica_a, replica_b, replica_c
    before = [served(s) for s in servers]
    seen: list[Classifier] = []
    seen_all = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        run = pool.submit(
            classify,
            f"{NAME}:{port}",
            rounds(records, until=seen_all),
            max_in_flight=2,
            resolve=resolver(table),
            resolve_seconds=0.1,
            seen=seen,
        )
        wait_for(lambda: served(replica_a) + served(replica_b) >= sum(before[:2]) + 10)
        table[NAME] = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]  # a pod became ready
        wait_for(lambda: served(replica_c) > before[2] or run.done())
        assert not run.done(), run.exception()  # the input goes on until `seen_all`
        (classifier,) = seen
        assert classifier.connection.servers == 3

        table[NAME] = ["127.0.0.2", "127.0.0.4"]  # a pod went away
        gone = replica_b.grpc_url

        def left() -> bool:
            return any(s.url == gone and s.removed for s in classifier.stats) or run.done()

        wait_for(left)
        assert not run.done(), run.exception()
        at_removal = served(replica_b)
        seen_all.set()
        results, stats = run.result(timeout=300)
    # No chunk lost, none used twice: each round answered as the single-server run.
    assert len(results) % len(records) == 0
    assert answers(results, without_round=True) == reference * (len(results) // len(records))
    got = [served(s) - b for s, b in zip(servers, before)]
    assert all(got), got
    assert served(replica_b) <= at_removal + 1  # only the one request it had in flight
    by_url = {s.url: s for s in stats}
    assert [by_url[s.grpc_url].answered for s in servers] == got
    assert sum(got) == requests_of(results)
    assert by_url[gone].removed and not by_url[replica_c.grpc_url].removed


def test_cli_spreads_over_every_address_of_a_name_from_the_system_resolver(
    replica_a, replica_b, port, contigs, tmp_path
):
    """`predict --url NAME:PORT` through getaddrinfo: the client runs in a mount namespace of
    its own whose /etc/hosts gives the name two addresses, as a cluster's DNS does."""
    assert shutil.which("unshare"), "util-linux's unshare is needed to give the client a hosts file"
    hosts = tmp_path / "hosts"
    hosts.write_text(f"127.0.0.1 localhost\n127.0.0.2 {NAME}\n127.0.0.3 {NAME}\n")
    expected = tmp_path / "expected"
    predict(contigs, 300, expected, replica_a.grpc_url, batch_chunks=BATCH, max_in_flight=1)
    before = served(replica_a), served(replica_b)
    out = tmp_path / "out"
    client = [str(CLI), "predict", str(contigs), "--chunk-size", "300", "-o", str(out)]
    client += ["--url", f"{NAME}:{port}", "--batch-chunks", str(BATCH), "--max-in-flight", "2"]
    in_namespace = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c"]
    in_namespace += ['mount --bind "$0" /etc/hosts && exec "$@"', str(hosts)]
    result = subprocess.run(in_namespace + client, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for name in RESULTS:
        assert (out / name).read_bytes() == (expected / name).read_bytes(), name
    got = served(replica_a) - before[0], served(replica_b) - before[1]
    assert got[0] > 0 and got[1] > 0, got
    for server, count in zip((replica_a, replica_b), got):
        assert f"{server.grpc_url}: {count} requests answered" in result.stdout
