"""Shared fixtures: a tiny exported repository and one real tritonserver serving it; the test
tiers (README, Tests): a test is `server` when it uses a fixture that starts a tritonserver or is
marked so, else `unit`, and a `unit` test that starts one fails."""

from __future__ import annotations

import random
import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests import fake_checkpoints as a module
# A shell without job control starts background commands with SIGINT ignored, and exec keeps
# an ignored signal ignored: the CLI processes the signal tests interrupt would never see
# their Ctrl-C. A handler here (pytest's own process and each xdist worker) gives children
# the default disposition.
signal.signal(signal.SIGINT, signal.default_int_handler)

from reference import MIXED  # noqa: E402
from servers import Hold  # noqa: E402

from virnucpro_triton.export import export_repository  # noqa: E402
from virnucpro_triton.server import EmbeddedServer  # noqa: E402

# Reference outputs of broadinstitute/virnucpro-broad (MIT, see its LICENSE), made with the
# real weights: shared/peer-data/virnucpro-broad copied in so a bare clone can test.
PEER = Path(__file__).parent / "data" / "virnucpro-broad"


# Fixtures that start a tritonserver (here and in the test modules): their tests are `server`.
SERVER_FIXTURES = {
    "server",
    "fixed_server",
    "second_server",
    "held_server",
    "small_queue_server",
    "replica_a",
    "replica_b",
    "replica_c",
    "echo_server",
    "token_server",
    "tls_server",
    "echo_repository",  # a one-model repository only the server tests start servers on
}


# The files that take longest (each starts servers of its own), longest first: pytest-xdist
# hands whole files to its workers in collection order, so these start first and no worker is
# left with one of them while the others idle. Only the order changes, never a verdict.
LONGEST_FIRST = (
    "test_replicas.py",
    "test_packaging.py",
    "test_deploy.py",
    "test_cluster_client.py",
    "test_signals.py",
    "test_hardening.py",
    "test_faults.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files stay whole
    for item in items:
        if any(item.get_closest_marker(tier) for tier in ("container", "gpu", "cluster")):
            continue  # tiers of their own, whatever they start
        if SERVER_FIXTURES.intersection(item.fixturenames):
            item.add_marker(pytest.mark.server)
        if not item.get_closest_marker("server"):
            item.add_marker(pytest.mark.unit)


@pytest.fixture(autouse=True)
def unit_tests_start_no_server(request, monkeypatch):
    """A new test that starts a server lands in the `server` tier, or fails saying so."""
    if request.node.get_closest_marker("unit"):

        def refuse(self):
            raise AssertionError("this test starts a tritonserver: mark it @pytest.mark.server")

        monkeypatch.setattr(EmbeddedServer, "_command", refuse)


@pytest.fixture(scope="session")
def tiny_repository(tmp_path_factory) -> Path:
    repository = tmp_path_factory.mktemp("repository")
    export_repository(repository, tiny=True, report=lambda _: None)
    return repository


@pytest.fixture(scope="module")
def hold(tiny_repository, tmp_path_factory) -> Hold:
    """A copy of the tiny repository whose classifier holds requests on the test's word."""
    return Hold(tiny_repository, tmp_path_factory.mktemp("hold"))


@pytest.fixture(scope="session")
def server(tiny_repository, tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "tritonserver.log"
    with EmbeddedServer(tiny_repository, log_path=log) as running:
        yield running
    # A failing test's output shows where the log is; pytest keeps tmp dirs of recent runs.


@pytest.fixture(scope="session")
def mixed_fasta(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("input") / "mixed.fa"
    path.write_text(MIXED)
    return path


@pytest.fixture(scope="session")
def contigs(tmp_path_factory) -> Path:
    """~300 chunks of 300 bp with a stop-free first frame: seconds of requests on a CPU server."""
    from inputs import STOP_FREE_CODONS

    rng = random.Random(7)
    path = tmp_path_factory.mktemp("contigs") / "contigs.fa"
    with open(path, "w") as handle:
        for i in range(90):
            sequence = "".join(rng.choices(STOP_FREE_CODONS, k=rng.randrange(100, 500)))
            handle.write(f">contig_{i}\n{sequence}\n")
    return path
