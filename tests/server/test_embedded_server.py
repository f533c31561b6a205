"""EmbeddedServer against the real tritonserver from the nvidia-pytriton wheel (CPU only)."""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from echo_repository import ECHO_MODEL, infer, make_repository
from servers import listening_addresses, processes_mentioning

from virnucpro_triton.server import EmbeddedServer, ServerError

BROKEN_MODEL = """
class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError("weights file is corrupt: boom-7f3a")
"""

MISSING_DEPENDENCY_MODEL = """
import no_such_package_7f3a  # noqa: F401


class TritonPythonModel:
    pass
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    repo = make_repository(tmp_path_factory.mktemp("repo"), echo=ECHO_MODEL)
    with EmbeddedServer(repo) as srv:
        yield srv


def test_serves_python_model_over_grpc(server: EmbeddedServer) -> None:
    result = infer(server.grpc_url, np.array([1.0, 2.5, -3.0], dtype=np.float32))
    np.testing.assert_array_equal(result.as_numpy("y"), np.array([2.0, 3.5, -2.0], np.float32))
    assert result.as_numpy("inits").tolist() == [1]
    # Same interpreter build as ours, i.e. the stub loaded this Python's libpython.
    assert result.as_numpy("version")[0].decode() == sys.version
    assert "successfully loaded 'echo'" in server.log_text()


def test_listens_on_loopback_only(server: EmbeddedServer) -> None:
    for port in server.ports.values():
        assert listening_addresses(port) == {"127.0.0.1"}, port


def test_busy_port_is_detected_from_the_server_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another process may take a port between our check and tritonserver's bind.
    monkeypatch.setattr(EmbeddedServer, "_check_ports_free", lambda self: None)
    repo = make_repository(tmp_path / "repo", echo=ECHO_MODEL)
    with socket.create_server(("127.0.0.1", 0)) as held:
        port = held.getsockname()[1]
        with pytest.raises(ServerError) as err:
            EmbeddedServer(repo, http_port=port).start(timeout=60)
    message = str(err.value)
    log = Path(re.search(r"Full log: (\S+)", message).group(1))
    assert log.exists()  # kept: the error names it
    log.unlink()
    assert f"HTTP port {port} on 127.0.0.1 is already in use" in message
    # The front door, which serves the ports, quoted from the log.
    assert f"cannot listen on 127.0.0.1:{port} for HTTP: address already in use" in message
    assert processes_mentioning(str(repo)) == set()


def test_model_failing_to_initialize_is_named_with_its_error(tmp_path: Path) -> None:
    repo = make_repository(
        tmp_path / "repo", echo=ECHO_MODEL, broken=BROKEN_MODEL, needs_dep=MISSING_DEPENDENCY_MODEL
    )
    log = tmp_path / "server.log"
    log.write_text("E1122 10:00:00.000000 1 model_lifecycle.cc:642] \"failed to load 'old'\"\n")
    with pytest.raises(ServerError) as err:
        EmbeddedServer(repo, log_path=log).start(timeout=60)
    message = str(err.value)
    # 'echo' loaded fine and 'old' failed in an earlier run that wrote to the same log
    assert "model(s) 'broken', 'needs_dep' in" in message
    assert "'old'" not in message and log.read_text().startswith("E1122")
    assert "No module named 'no_such_package_7f3a'" in message
    assert "ignore PYTHONPATH: install missing packages there" in message
    error_line = next(
        ln for ln in message.splitlines() if "failed to load 'broken' version 1" in ln
    )
    assert error_line.lstrip().startswith("E")  # quoted verbatim from the server's error log
    assert "RuntimeError: weights file is corrupt: boom-7f3a" in error_line
    assert processes_mentioning(str(repo)) == set()


# timeout 0: the server gets no time to exit, so stop() must kill it and its stub itself.
@pytest.mark.parametrize("timeout", [30.0, 0.0])
def test_stop_ends_server_and_stubs(tmp_path: Path, timeout: float) -> None:
    repo = make_repository(tmp_path / "repo", echo=ECHO_MODEL)
    srv = EmbeddedServer(repo).start()
    stub_pid = int(infer(srv.grpc_url, np.zeros(1, np.float32)).as_numpy("pid")[0])
    running = processes_mentioning(str(repo))
    assert stub_pid in running and len(running) == 3  # the door, tritonserver, the model's stub
    exit_codes: list[int] = []
    waiter = threading.Thread(target=lambda: exit_codes.append(srv.wait()))  # as `serve` does
    waiter.start()
    srv.stop(timeout)
    waiter.join(10)
    assert exit_codes == [0 if timeout else -signal.SIGKILL]
    assert processes_mentioning(str(repo)) == set()
    srv.stop()  # idempotent
    with pytest.raises(ServerError, match="not running"):
        srv.wait()


def test_a_log_made_by_the_server_goes_on_a_clean_stop_and_stays_after_a_failure(
    tmp_path: Path,
) -> None:
    repo = make_repository(tmp_path / "repo", echo=ECHO_MODEL)
    clean = EmbeddedServer(repo).start()
    assert clean.log_path.name.startswith("tritonserver-") and clean.log_path.exists()
    clean.stop()
    assert not clean.log_path.exists()

    crashed = EmbeddedServer(repo).start()  # as `serve` sees a server that dies under it
    try:
        os.kill(crashed.pid, signal.SIGKILL)
        assert crashed.wait() == -signal.SIGKILL
        crashed.stop()
        assert crashed.log_path.exists()  # `serve`'s error names it
    finally:
        crashed.log_path.unlink(missing_ok=True)

    given = tmp_path / "given.log"  # a log the caller named is the caller's
    EmbeddedServer(repo, log_path=given).start().stop()
    assert given.exists()
