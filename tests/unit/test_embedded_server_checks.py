"""EmbeddedServer's checks before tritonserver runs: free and busy ports, an unusable repository."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
from echo_repository import ECHO_MODEL, make_repository

from virnucpro_triton.processes import free_port
from virnucpro_triton.server import EmbeddedServer, ServerError


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.create_server(("127.0.0.1", port)):
        pass


def test_busy_port_is_reported_before_starting(tmp_path: Path) -> None:
    repo = make_repository(tmp_path / "repo", echo=ECHO_MODEL)
    log = tmp_path / "server.log"
    with socket.create_server(("127.0.0.1", 0)) as held:
        port = held.getsockname()[1]
        srv = EmbeddedServer(repo, grpc_port=port, log_path=log)
        with pytest.raises(ServerError, match=rf"gRPC port {port} on 127\.0\.0\.1 .*in use"):
            srv.start()
    assert not log.exists() or log.read_text() == ""  # tritonserver never ran


@pytest.mark.parametrize("kind", ["missing", "file", "empty"])
def test_unusable_repository_is_rejected(tmp_path: Path, kind: str) -> None:
    repo = tmp_path / "repo"
    if kind == "file":
        repo.write_text("not a directory")
    elif kind == "empty":
        repo.mkdir()
        (repo / "README").write_text("no models here")
    expected = {"missing": "does not exist", "file": "is not a directory", "empty": "no model"}
    with pytest.raises(ServerError, match=rf"{re.escape(str(repo))} .*{expected[kind]}"):
        EmbeddedServer(repo).start()
