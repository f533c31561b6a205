"""Which server errors the client retries: only an absent or busy server."""

from __future__ import annotations

import pytest
from tritonclient.utils import InferenceServerException

from virnucpro_triton.client.connection import is_transient


@pytest.mark.parametrize(
    ("status", "message", "transient"),
    [  # as seen from a server shutting down, restarting, overloaded, or refusing bad input
        ("UNAVAILABLE", "failed to connect to all addresses", True),
        ("UNAVAILABLE", "Server is stopping, scheduler for model has stopped", True),
        ("NOT_FOUND", "Request for unknown model: 'virnucpro' has no available versions", True),
        ("DEADLINE_EXCEEDED", "Deadline Exceeded", True),
        ("INTERNAL", "Failed to process the request(s): Stub process is not healthy.", True),
        ("INTERNAL", "esm2: Exceeds maximum queue size", True),
        ("INTERNAL", "esm2: Model esm2 - Error when running inference: Server not ready", True),
        ("INVALID_ARGUMENT", "DNA row 0: '!' is not a nucleotide code", False),
        ("INTERNAL", "internal error: ValueError: boom", False),
    ],
)
def test_only_an_absent_or_busy_server_is_retried(status, message, transient):
    error = InferenceServerException(message, f"StatusCode.{status}")
    assert is_transient(error) is transient
