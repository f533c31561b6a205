"""The request size limit without a server: the largest legal requests fit, and the door's
command-line endpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
from door_requests import OVERSIZE

from virnucpro_triton import repository as repo
from virnucpro_triton.door import limits as door_limits
from virnucpro_triton.door.app import DoorError, split_command, upstream_command


def test_largest_legal_requests_fit_under_the_limit():
    """The limit refuses nothing the entries take: a full batch of the longest sequences."""
    assert repo.EMBEDDER_MAX_BATCH * (repo.MAX_DNA_LENGTH + 4) < repo.MAX_REQUEST_BYTES
    assert repo.EMBEDDER_MAX_BATCH * (repo.MAX_PROTEIN_LENGTH + 4) < repo.MAX_REQUEST_BYTES
    longest_chunk = max(repo.CHUNK_SIZES)
    assert repo.PIPELINE_MAX_BATCH * (longest_chunk + 4 + 4) < repo.MAX_REQUEST_BYTES
    assert OVERSIZE > repo.MAX_REQUEST_BYTES


def test_command_line_endpoints():
    rest, endpoints = split_command(
        ["tritonserver", "--model-repository=/m", "--grpc-port", "9000", "--http-port=8080"]
    )
    assert rest == ["tritonserver", "--model-repository=/m"]
    assert {n: e.public for n, e in endpoints.items()} == {
        "grpc": "0.0.0.0:9000",
        "http": "0.0.0.0:8080",
        "metrics": "0.0.0.0:8002",
    }
    _, endpoints = split_command(["t", "--http-address=::1", "--allow-metrics=false"])
    assert endpoints["metrics"].address == "::1" and not endpoints["metrics"].enabled
    assert endpoints["http"].public == "[::1]:8000"
    command = upstream_command(["t", "--allow-metrics=false"], endpoints, Path("/s"))
    assert command == [
        "t",
        "--allow-metrics=false",
        "--grpc-address=unix:/s/grpc",
        "--grpc-port=8001",
        "--http-address=unix:/s/http",
        "--http-port=8000",
        "--grpc-infer-allocation-pool-size=0",
    ]
    given = ["t", "--grpc-infer-allocation-pool-size", "8"]  # the command's own value stays
    assert upstream_command(given, {}, Path("/s")) == given
    env = door_limits.triton_env({"MALLOC_TRIM_THRESHOLD_": "1", "PATH": "/bin"})
    assert env == {
        "MALLOC_MMAP_THRESHOLD_": "131072",
        "MALLOC_TRIM_THRESHOLD_": "1",
        "PATH": "/bin",
    }
    for bad, message in [
        (["t", "--grpc-port=x"], "not a port number"),
        (["t", "--http-port=70000"], "1-65535"),
        (["t", "--grpc-use-ssl=true"], "TLS"),
        (["t", "--grpc-port"], "needs a value"),
        ([], "no tritonserver command"),
    ]:
        with pytest.raises(DoorError, match=message):
            split_command(bad)
