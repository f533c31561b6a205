"""The unit tier: no tritonserver at all."""

from pathlib import Path

import pytest

from virnucpro_triton.server import EmbeddedServer

UNIT = Path(__file__).parent


def refuse(self):
    raise AssertionError("this test starts a tritonserver: it belongs in tests/server")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """A unit test that starts a tritonserver fails saying so, whether the test itself or a
    fixture it sets up (the session's `server` too) starts it. pytest calls this hook for every
    test of the run, whatever its folder."""
    if UNIT not in item.path.parents:
        return (yield)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(EmbeddedServer, "_command", refuse)
        return (yield)
