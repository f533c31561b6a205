"""Helpers for tests that watch real servers: request counts and polling."""

from __future__ import annotations

import time
from collections.abc import Callable

import tritonclient.grpc as grpcclient

from virnucpro_triton.repository import PIPELINE
from virnucpro_triton.server import EmbeddedServer


def served(server: EmbeddedServer) -> int:
    """Pipeline requests this server process answered successfully."""
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        stats = client.get_inference_statistics(PIPELINE, as_json=True)
    return int(stats["model_stats"][0]["inference_stats"]["success"].get("count", 0))


def wait_for(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
