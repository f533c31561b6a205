"""The unit tier: no tritonserver at all."""

import pytest

from virnucpro_triton.server import EmbeddedServer


@pytest.fixture(autouse=True)
def unit_tests_start_no_server(monkeypatch):
    """A test that starts a tritonserver belongs in tests/server, and fails here saying so."""

    def refuse(self):
        raise AssertionError("this test starts a tritonserver: it belongs in tests/server")

    monkeypatch.setattr(EmbeddedServer, "_command", refuse)
