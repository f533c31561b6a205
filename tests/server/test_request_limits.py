"""The front door (door/app.py): oversize requests refused at the port over gRPC and HTTP, the
server's memory back to its baseline after them, everything else passed through."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import signal
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from door_requests import (
    MB,
    OVERSIZE,
    http_exchange,
    oversize_http_head,
    pipeline_request,
    shm_bytes,
    triton_pid,
)
from echo_repository import ECHO_MODEL, infer, make_repository
from servers import listening_addresses, processes_mentioning, wait_for
from tritonclient.utils import InferenceServerException

from virnucpro_triton import repository as repo
from virnucpro_triton.processes import free_port
from virnucpro_triton.server import (
    EmbeddedServer,
    _server_env,
    _wheel_dirs,
    backend_directory,
)

SLACK = 50 * MB  # how far above its baseline the server's memory may stay


def door_and_triton_rss(server: EmbeddedServer) -> int:
    """Resident bytes of the door and of tritonserver (its child). The stubs are left out: a
    request refused at the door never reaches them, which the request counts show, and they may
    still be working off what earlier tests left queued."""
    total = 0
    for pid in (server._proc.pid, triton_pid(server)):
        status = Path(f"/proc/{pid}/status").read_text()
        total += int(status.split("VmRSS:")[1].split()[0]) * 1024
    return total


def pipeline_requests(server: EmbeddedServer) -> tuple[int, int]:
    """(successful, failed) requests tritonserver counted for the pipeline."""
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        stats = client.get_inference_statistics(repo.PIPELINE, as_json=True)
    counts = stats["model_stats"][0]["inference_stats"]
    return int(counts["success"].get("count", 0)), int(counts["fail"].get("count", 0))


def test_oversize_requests_are_refused_and_memory_returns(server):
    """A 200 MB element over gRPC (plain, gzip-compressed, on the stream), over HTTP (with a
    Content-Length, chunked, gzip): refused before tritonserver counts a request; the memory of
    the door and tritonserver and the shared-memory regions stay within 50 MB of where they
    were; it keeps answering."""
    path = f"/v2/models/{repo.PIPELINE}/infer"
    dna = b"A" * OVERSIZE
    rss, shm, counted = door_and_triton_rss(server), shm_bytes(server), pipeline_requests(server)
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        for compression in (None, "gzip"):
            with pytest.raises(InferenceServerException, match="larger than max") as refused:
                client.infer(
                    repo.PIPELINE, pipeline_request(dna), compression_algorithm=compression
                )
            assert "RESOURCE_EXHAUSTED" in str(refused.value.status())
        answers = []
        client.start_stream(callback=lambda result, error: answers.append(error))
        client.async_stream_infer(repo.PIPELINE, pipeline_request(dna))
        client.stop_stream()
        assert answers and "larger than max" in str(answers[0]), answers
    # HTTP: the head alone is refused, before any of the body is read.
    status, _ = http_exchange(
        server.http_url, oversize_http_head(path, b"Content-Length: %d\r\n" % OVERSIZE)
    )
    assert status == 413
    chunks = (b"%x\r\n%s\r\n" % (MB, b"A" * MB) for _ in range(OVERSIZE // MB))
    status, sent = http_exchange(
        server.http_url, oversize_http_head(path, b"Transfer-Encoding: chunked\r\n"), chunks
    )
    assert status == 413 and sent < OVERSIZE
    body = json.dumps({"inputs": [{"name": "DNA", "data": [dna.decode()]}]}).encode()
    bomb = gzip.compress(body, compresslevel=1)
    head = b"Content-Encoding: gzip\r\nContent-Length: %d\r\n" % len(bomb)
    status, _ = http_exchange(server.http_url, oversize_http_head(path, head), [bomb])
    assert status == 413
    del dna, body
    assert pipeline_requests(server) == counted  # none of them reached tritonserver
    wait_for(lambda: door_and_triton_rss(server) < rss + SLACK, timeout=60)
    assert shm_bytes(server) < shm + SLACK
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        assert client.is_model_ready(repo.PIPELINE)


@pytest.fixture(scope="module")
def echo_server(tmp_path_factory):
    with EmbeddedServer(make_repository(tmp_path_factory.mktemp("echo"), echo=ECHO_MODEL)) as srv:
        yield srv


def test_requests_under_the_limit_pass_both_ways(echo_server):
    """A 30 MB tensor goes through the door, and its 30 MB answer comes back whole."""
    x = np.arange(30 * MB // 4, dtype=np.float32)
    np.testing.assert_array_equal(infer(echo_server.grpc_url, x).as_numpy("y"), x + 1)


def listening_inodes() -> dict[str, int]:
    """Socket inode -> port of every listening TCP socket (IPv4 and IPv6)."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                found[fields[9]] = int(fields[1].rsplit(":", 1)[1], 16)
    return found


def tcp_ports_of(pid: int) -> set[int]:
    listening = listening_inodes()
    ports = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                ports.add(listening.get(target[8:-1]))
    return ports - {None}


def test_only_the_door_listens_and_tritonserver_is_private(echo_server):
    """The server's ports are the door's, on loopback; tritonserver has no TCP port to bypass
    the limit through, only Unix sockets in a directory of its user's alone."""
    for port in echo_server.ports.values():
        assert listening_addresses(port) == {"127.0.0.1"}, port
    assert tcp_ports_of(echo_server._proc.pid) == set(echo_server.ports.values())
    triton = triton_pid(echo_server)
    assert Path(f"/proc/{triton}/exe").resolve().name == "tritonserver"
    assert tcp_ports_of(triton) == set()
    command = Path(f"/proc/{triton}/cmdline").read_bytes().decode().split("\0")
    (address,) = (a for a in command if a.startswith("--grpc-address="))
    sockets = Path(address.removeprefix("--grpc-address=unix:")).parent
    assert stat.S_IMODE(sockets.stat().st_mode) == 0o700


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_the_door_command_stops_on_a_signal_and_leaves_nothing(tmp_path, sig):
    """What the image runs (its ENTRYPOINT): a signal stops tritonserver gracefully, also after
    HTTP requests (a container's health checks); no process, port or socket directory is left."""
    repository = make_repository(tmp_path / "repo", echo=ECHO_MODEL)
    ports = {"grpc": free_port(), "http": free_port(), "metrics": free_port()}
    tritonserver = str(_wheel_dirs()[0] / "bin" / "tritonserver")
    env = {**_server_env(None), "TMPDIR": str(tmp_path)}
    door = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "virnucpro-triton-door"),
            tritonserver,
            f"--model-repository={repository}",
            f"--backend-directory={backend_directory()}",
            *(f"--{n}-address=127.0.0.1" for n in ports),
            *(f"--{n}-port={p}" for n, p in ports.items()),
            # Shorter than aiohttp's 15 s keep-alive: a connection the door kept open to
            # tritonserver's HTTP socket would hold the shutdown past it (exit status 1).
            "--exit-timeout-secs=10",
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"127.0.0.1:{ports['grpc']}"
        wait_for(lambda: _ready(url), timeout=300)
        np.testing.assert_array_equal(infer(url, np.ones(3, np.float32)).as_numpy("y"), [2, 2, 2])
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['http']}/v2/health/ready") as ready:
            assert ready.status == 200  # as a container's health check asks
        assert list(tmp_path.glob("vt-door-*")), "the door's socket directory"
        door.send_signal(sig)
        _, err = door.communicate(timeout=120)
    finally:
        door.kill()
    assert door.returncode == 0, err
    assert processes_mentioning(str(repository)) == set()
    assert not list(tmp_path.glob("vt-door-*"))
    for port in ports.values():
        assert listening_addresses(port) == set()


def _ready(url: str) -> bool:
    try:
        with grpcclient.InferenceServerClient(url) as client:
            return client.is_model_ready("echo")
    except InferenceServerException:
        return False


def test_a_malformed_http_request_is_one_line_of_the_log(echo_server):
    """aiohttp logs a request it cannot parse with a traceback, which reads like a crash."""
    head = (
        b"POST /v2/models/echo/infer HTTP/1.1\r\nHost: x\r\nBad: a\nb\r\nContent-Length: 0\r\n\r\n"
    )
    assert http_exchange(echo_server.http_url, head)[0] == 400
    wait_for(lambda: "front door: Error handling request" in echo_server.log_text(), timeout=60)
    assert "Traceback" not in echo_server.log_text()
