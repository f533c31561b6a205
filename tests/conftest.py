"""Shared fixtures: a tiny exported repository and one real tritonserver serving it. The tiers
(README, Tests) are the folders beside this file: each test is marked with its folder's name
(unit, server, workflow, container, cluster, gpu), and tests/unit/conftest.py keeps the unit
tier free of tritonservers."""

from __future__ import annotations

import random
import signal
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))  # the tiers import the helper modules beside this file
# A signal ignored when the suite starts stays ignored across exec: SIGHUP under nohup, SIGINT
# in a background job of a shell without job control. The CLI processes that the signal tests
# stop would never see it. A handler that does nothing keeps this process (pytest's own and
# each xdist worker) as it was started, and exec gives children the default disposition.
SENT = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # the signals the tests send
for _signum in SENT:
    if signal.getsignal(_signum) is signal.SIG_IGN:
        signal.signal(_signum, lambda _signum, _frame: None)

from reference import MIXED  # noqa: E402
from servers import Hold  # noqa: E402

from virnucpro_triton.export import export_repository  # noqa: E402
from virnucpro_triton.server import EmbeddedServer  # noqa: E402


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(item.path.relative_to(TESTS).parts[0])  # the tier: the test's folder


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
