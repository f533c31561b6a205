"""Attacks on real servers (docs/reliability.md): the shared-memory APIs closed,
shared-memory regions private to their server and removed after it, concurrent starts, the
same server flags everywhere, malformed checkpoint records."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from echo_repository import ECHO_MODEL, make_repository
from fake_checkpoints import classifier_dim
from servers import wait_for
from tritonclient.utils import InferenceServerException

from virnucpro_triton import repository as repo
from virnucpro_triton.server import EmbeddedServer, remove_stale_regions


def http_post(url: str, path: str, body: dict) -> tuple[int, str]:
    request = urllib.request.Request(
        f"http://{url}{path}", json.dumps(body).encode(), method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def raw_http_status(url: str, path: str, header: bytes, body: bytes) -> int:
    """POST with a hand-written header line, as no HTTP library would send it."""
    host, port = url.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(
            b"POST %s HTTP/1.1\r\nHost: x\r\n%s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (path.encode(), header, len(body), body)
        )
        reply = b""
        while chunk := connection.recv(65536):
            reply += chunk
    return int(reply.split()[1]) if reply else 0


def classify_zeros(server: EmbeddedServer, dim: int) -> np.ndarray:
    features = grpcclient.InferInput("FEATURES", [1, dim], "FP32")
    features.set_data_from_numpy(np.zeros((1, dim), np.float32))
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        return client.infer("classifier_300", [features]).as_numpy("PROBABILITIES")


def test_shared_memory_apis_are_closed(server, tiny_repository):
    """Two calls: register one of the backend's own regions by its /dev/shm name, then ask
    classifier_300 to write its output there, which aborts an open tritonserver (status -6)."""
    dim = classifier_dim(tiny_repository)
    before = classify_zeros(server, dim)
    region = server.shm_regions()[0].name
    register = {"key": f"/{region}", "offset": 0, "byte_size": 1 << 20}
    for kind in ("systemsharedmemory", "cudasharedmemory"):
        for path in (f"/v2/{kind}/region/x/register", f"/v2/{kind}/region/x/unregister"):
            status, body = http_post(server.http_url, path, register)
            assert status == 403 and "restricted" in body, (path, status, body)
    # The header's value holds a line break: neither a bare LF nor a folded line carries it.
    key = repo.CLOSED_KEY.encode()
    for header in (b"%s: by a\nline break" % key, b"%s: by a\r\n line break" % key):
        status = raw_http_status(
            server.http_url,
            "/v2/systemsharedmemory/region/x/register",
            header,
            json.dumps(register).encode(),
        )
        assert status in (0, 400, 403), (header, status)  # 0: closed without an answer
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        calls = [
            lambda: client.register_system_shared_memory("x", f"/{region}", 1 << 20),
            lambda: client.register_cuda_shared_memory("x", b"\0" * 64, 0, 1 << 20),
            client.get_system_shared_memory_status,
            client.get_cuda_shared_memory_status,
            client.unregister_system_shared_memory,
            client.unregister_cuda_shared_memory,
        ]
        for call in calls:
            with pytest.raises(InferenceServerException, match="restricted"):
                call()
    # The second call: nothing was registered (by any of the above), so it fails on its own.
    features = httpclient.InferInput("FEATURES", [1, dim], "FP32")
    features.set_data_from_numpy(np.zeros((1, dim), np.float32))
    output = httpclient.InferRequestedOutput("PROBABILITIES")
    output.set_shared_memory("x", 8)
    with httpclient.InferenceServerClient(server.http_url) as client:
        with pytest.raises(InferenceServerException, match="Unable to find shared memory"):
            client.infer("classifier_300", [features], outputs=[output])
    np.testing.assert_array_equal(classify_zeros(server, dim), before)  # up, and answering


def test_model_control_log_and_trace_apis_are_refused(server, tmp_path):
    """Loading models, and trace or log settings (they name files the server writes)."""
    trace_file = tmp_path / "trace.json"
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        for call in (lambda: client.load_model(repo.ESM2), lambda: client.unload_model(repo.ESM2)):
            with pytest.raises(InferenceServerException):
                call()
        for call in (
            lambda: client.update_log_settings({"log_verbose_level": 3}),
            client.get_log_settings,
            lambda: client.update_trace_settings(settings={"trace_file": str(trace_file)}),
            client.get_trace_settings,
        ):
            with pytest.raises(InferenceServerException, match="restricted"):
                call()
        assert client.is_model_ready(repo.ESM2)
    for path in ("/v2/logging", "/v2/trace/setting"):
        status, body = http_post(server.http_url, path, {"log_verbose_level": 3})
        assert status == 403 and "restricted" in body, (path, status, body)
    assert not trace_file.exists()


def test_regions_are_named_per_server_and_private(server):
    regions = server.shm_regions()
    assert regions, "the server's regions carry its prefix"
    for region in regions:
        assert stat.S_IMODE(region.stat().st_mode) == 0o600, region
    other = EmbeddedServer(server.repository)
    assert other.shm_prefix != server.shm_prefix


@pytest.fixture(scope="module")
def echo_repository(tmp_path_factory) -> Path:
    """A one-model repository: starts in seconds, where the tiny VirNucPro one takes a minute."""
    return make_repository(tmp_path_factory.mktemp("echo"), echo=ECHO_MODEL)


def test_regions_of_a_killed_server_are_removed(echo_repository):
    """SIGKILL gives the server no chance to remove its regions: the next start does, and only
    those of servers no longer running."""
    killed = EmbeddedServer(echo_repository).start()
    alive = EmbeddedServer(echo_repository).start()
    try:
        regions = killed.shm_regions()
        assert regions
        os.killpg(killed._proc.pid, signal.SIGKILL)  # the server and its stubs, uncleanly
        killed._proc.wait()
        wait_for(lambda: not named_by_a_process(killed.shm_prefix), timeout=30)
        assert all(r.exists() for r in regions)  # the kill left them
        removed = remove_stale_regions()
        assert {r.name for r in regions} <= set(removed)
        assert not any(r.exists() for r in regions)
        assert alive.shm_regions() and not set(removed) & {r.name for r in alive.shm_regions()}
    finally:
        killed.stop()
        alive.stop()
    assert alive.shm_regions() == []  # a clean stop removes its own


def named_by_a_process(prefix: str) -> bool:
    """Whether a process still names `prefix` (the killed group may take a moment to go)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if prefix.encode() in cmdline.read_bytes():
                return True
        except OSError:
            pass
    return False


@pytest.mark.slow  # 12 server starts
def test_four_servers_start_at_once_three_rounds(echo_repository):
    """Concurrent starts sharing a prefix die in load with boost::interprocess::lock_exception."""
    for _ in range(3):
        servers = [EmbeddedServer(echo_repository) for _ in range(4)]
        try:
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(lambda s: s.start(timeout=300), servers))
            for s in servers:
                with grpcclient.InferenceServerClient(s.grpc_url) as client:
                    assert client.is_model_ready("echo")
            assert len({s.shm_prefix for s in servers}) == 4
        finally:
            for s in servers:
                s.stop()


def test_server_flags_parse_in_tritonserver(server):
    """The running server took them as they are (it exits on a malformed one)."""
    command = Path(f"/proc/{server._proc.pid}/cmdline").read_bytes().split(b"\0")
    assert {f.encode() for f in repo.SERVER_FLAGS} <= set(command)
