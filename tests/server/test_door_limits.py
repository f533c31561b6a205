"""The front door's limits (door/limits.py) against real servers: JSON nesting, idle and slow
connections, connections per port, bytes in flight, compression bombs, the answer's encoding,
gRPC once tritonserver is ready, and a killed door's socket directory."""

from __future__ import annotations

import gzip
import http.client
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import brotli
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from door_requests import pipeline_request, shm_bytes, triton_pid
from echo_repository import ECHO_MODEL, infer, make_repository
from servers import processes_mentioning, wait_for
from tritonclient.utils import InferenceServerException

from virnucpro_triton import repository as repo
from virnucpro_triton.door import limits as door_limits
from virnucpro_triton.door.sockets import PREFIX
from virnucpro_triton.processes import free_port
from virnucpro_triton.server import (
    EmbeddedServer,
    _server_env,
    _wheel_dirs,
    backend_directory,
)

MB = 2**20
INFER = "/v2/models/echo/infer"
ECHO_JSON = json.dumps(
    {"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2, 3]}]}
).encode()


def http_call(
    url: str, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request with exactly these headers (http.client adds no Accept-Encoding here)."""
    host, port = url.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        for k, v in {"Content-Length": str(len(body)), **(headers or {})}.items():
            connection.putheader(k, v)
        connection.endheaders(body)
        answer = connection.getresponse()
        return answer.status, dict(answer.getheaders()), answer.read()
    finally:
        connection.close()


def echo_answers(url: str) -> bool:
    """gRPC inference answers, right (raises otherwise)."""
    np.testing.assert_array_equal(infer(url, np.ones(3, np.float32)).as_numpy("y"), [2, 2, 2])
    return True


def grpc_answers(url: str) -> bool:
    """Whether gRPC inference answers now."""
    try:
        return echo_answers(url)
    except InferenceServerException:
        return False


@pytest.fixture(scope="module")
def echo_repository(tmp_path_factory) -> Path:
    return make_repository(tmp_path_factory.mktemp("echo"), echo=ECHO_MODEL)


@pytest.fixture(scope="module")
def echo_server(echo_repository):
    with EmbeddedServer(echo_repository) as srv:
        yield srv


def test_a_json_nesting_bomb_is_refused_and_the_server_lives(echo_server):
    """200,000 nested `[` (200 KB, or 326 bytes gzip-compressed) crash tritonserver's JSON
    parser: a 400 naming the limit, for both, and the server answers on."""
    bomb = b"[" * 200_000
    for body, headers in [(bomb, {}), (gzip.compress(bomb), {"Content-Encoding": "gzip"})]:
        status, _, answer = http_call(echo_server.http_url, "POST", INFER, body, headers)
        assert status == 400, (status, answer)
        assert f"limit of {door_limits.MAX_JSON_DEPTH}" in json.loads(answer)["error"]
    assert echo_answers(echo_server.grpc_url)
    status, _, answer = http_call(echo_server.http_url, "POST", INFER, ECHO_JSON)
    assert status == 200 and json.loads(answer)["outputs"][0]["data"] == [2, 3, 4]
    # Binary tensors after the JSON head are not JSON: bytes of `[` in them pass.
    x = np.frombuffer(b"[" * 4000, np.float32)
    tensor = httpclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=True)
    with httpclient.InferenceServerClient(echo_server.http_url) as client:
        np.testing.assert_array_equal(client.infer("echo", [tensor]).as_numpy("y"), x + 1)
    assert echo_server._proc.poll() is None


def test_answers_are_compressed_only_when_the_client_asks(echo_server):
    """The door's HTTP client added its own Accept-Encoding: gzip answers to plain curl."""
    status, headers, answer = http_call(echo_server.http_url, "POST", INFER, ECHO_JSON)
    assert status == 200 and "Content-Encoding" not in headers, headers
    assert json.loads(answer)["outputs"][0]["data"] == [2, 3, 4]
    status, headers, answer = http_call(
        echo_server.http_url, "POST", INFER, ECHO_JSON, {"Accept-Encoding": "gzip"}
    )
    assert status == 200
    if headers.get("Content-Encoding") == "gzip":
        answer = gzip.decompress(answer)
    assert json.loads(answer)["outputs"][0]["data"] == [2, 3, 4]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) * 1024


def test_a_compression_bomb_costs_no_more_than_the_limit(echo_server):
    """A brotli body of under 1 KB that inflates to 1 GiB: 413, and the door stops inflating
    there (an answer alone does not stop a body being read on)."""
    compressor = brotli.Compressor(quality=4, lgwin=24)
    zeros = bytes(4 * MB)
    bomb = b"".join(compressor.process(zeros) for _ in range(256)) + compressor.finish()
    assert len(bomb) < 2000
    # What inflating a quarter of it costs here: the door may spend well under that.
    decompressor, quarter = brotli.Decompressor(), 0
    started = time.process_time()
    for i in range(0, len(bomb), 16):
        quarter += len(decompressor.process(bomb[i : i + 16]))
        if quarter >= 256 * MB:
            break
    budget = time.process_time() - started
    door = echo_server._proc.pid
    Path(f"/proc/{door}/clear_refs").write_text("5")  # resets the peak RSS
    rss, cpu = peak_rss(door), cpu_seconds(door)
    status, _, answer = http_call(
        echo_server.http_url, "POST", INFER, bomb, {"Content-Encoding": "br"}
    )
    assert status == 413, answer
    wait_for(lambda: grpc_answers(echo_server.grpc_url))
    assert cpu_seconds(door) - cpu < budget, (cpu_seconds(door) - cpu, budget)
    assert peak_rss(door) - rss < 4 * repo.MAX_REQUEST_BYTES


TIGHT = ["--header-timeout=2", "--idle-timeout=4", "--body-timeout=4"]


@pytest.fixture(scope="module")
def tight_server(echo_repository):
    with EmbeddedServer(echo_repository, door_options=TIGHT) as srv:
        yield srv


def connect(url: str) -> socket.socket:
    host, port = url.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=30)


def closed(connection: socket.socket) -> bool:
    """Whether the server closed it (after an answer, if any)."""
    connection.setblocking(False)
    try:
        while connection.recv(65536):
            pass
        return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_idle_half_sent_and_trickling_connections_are_closed(tight_server):
    """Connections that send nothing, half a head, or a body a byte at a time would stay
    open: closed after the header, idle or body timeout (2, 4 and 4 s here)."""
    http, grpc = tight_server.http_url, tight_server.grpc_url
    idle = [connect(http) for _ in range(3)] + [connect(grpc) for _ in range(3)]
    half = [connect(http) for _ in range(3)]
    for connection in half:
        connection.sendall(b"POST /v2/models/echo/infer HTTP/1.1\r\nHost: x\r\n")
    trickling = [connect(http) for _ in range(3)]
    for connection in trickling:
        connection.sendall(
            b"POST /v2/models/echo/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n["
        )
    connections = idle + half + trickling

    def all_closed() -> bool:
        for connection in trickling:
            try:
                connection.send(b" ")
            except OSError:
                pass
        return all(map(closed, connections))

    try:
        wait_for(all_closed, timeout=120)
        assert echo_answers(grpc)
        assert http_call(http, "POST", INFER, ECHO_JSON)[0] == 200
    finally:
        for connection in connections:
            connection.close()
    log = tight_server.log_text()
    assert "not complete within 2 s" in log
    assert "Traceback" not in log


@pytest.fixture(scope="module")
def capped_server(echo_repository):
    options = ["--max-connections=8", "--header-timeout=600", "--idle-timeout=600"]
    options.append(f"--max-bytes-in-flight={repo.MAX_REQUEST_BYTES}")  # one request at a time
    with EmbeddedServer(echo_repository, door_options=options) as srv:
        yield srv


def ready_status(url: str) -> int:
    """The readiness answer's status, 0 when the connection closed without one."""
    try:
        return http_call(url, "GET", "/v2/health/ready")[0]
    except (ConnectionError, http.client.HTTPException):
        return 0


def answered_and_kept(url: str) -> http.client.HTTPConnection:
    """A connection the door has accepted: it answered a readiness request, and stays open."""
    host, port = url.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    connection.request("GET", "/v2/health/ready")
    answer = connection.getresponse()
    answer.read()
    assert answer.status == 200
    return connection


def test_connections_past_the_cap_are_refused_and_other_ports_answer(capped_server):
    """500 idle connections locked every client out: past the cap of a port (8 here) a
    connection is refused, the other port answers, and the log says so in one line."""
    http, grpc = capped_server.http_url, capped_server.grpc_url
    # Each held connection is counted by the door before the next opens: a probe waiting for
    # the cap could otherwise take the slot of a held connection still in the kernel's queue.
    held = [answered_and_kept(http) for _ in range(8)]
    try:
        for _ in range(5):
            assert ready_status(http) in (0, 503)  # refused: closed, or 503 and closed
        assert echo_answers(grpc)  # gRPC's port has its own cap
    finally:
        for connection in held:
            connection.close()
    wait_for(lambda: ready_status(http) == 200)
    held = [connect(grpc) for _ in range(8)]
    try:
        refused = connect(grpc)
        wait_for(lambda: closed(refused))
        assert http_call(http, "POST", INFER, ECHO_JSON)[0] == 200
    finally:
        for connection in held:
            connection.close()
    wait_for(lambda: grpc_answers(grpc))
    log = capped_server.log_text()
    assert log.count("refused HTTP connections past the limit of 8") == 1, log
    assert "Traceback" not in log


HELD_LOAD_MODEL = ECHO_MODEL.replace(
    "    def initialize(self, args):\n",
    "    def initialize(self, args):\n"
    "        import pathlib, time\n"
    "        while pathlib.Path(__file__).with_name('loading').exists():\n"
    "            time.sleep(0.05)\n",
)


def test_grpc_answers_as_soon_as_http_says_ready(tmp_path):
    """gRPC calls during a model load put the door's channel to tritonserver in reconnect
    back-off: with gRPC's default back-off, UNAVAILABLE long after /v2/health/ready turns
    200, with the door's socket path in the error."""
    repository = make_repository(tmp_path / "repo", echo=HELD_LOAD_MODEL)
    loading = repository / "echo" / "1" / "loading"
    loading.touch()
    server = EmbeddedServer(repository)
    started = threading.Thread(target=server.start)
    started.start()
    try:
        wait_for(lambda: server._proc is not None and "loading: echo" in server.log_text())
        errors = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with grpcclient.InferenceServerClient(server.grpc_url) as client:
                try:
                    client.is_server_ready(client_timeout=5)
                except InferenceServerException as error:
                    errors.append(str(error))
        assert errors and all("UNAVAILABLE" in e for e in errors), errors
        assert not any(PREFIX in e or "unix:" in e for e in errors), errors
        loading.unlink()
        url = f"http://{server.http_url}/v2/health/ready"
        wait_for(lambda: ready_status(server.http_url) == 200, timeout=120)
        ready_at = time.monotonic()
        wait_for(lambda: grpc_answers(server.grpc_url), timeout=60)
        assert time.monotonic() - ready_at < 3, url
    finally:
        loading.unlink(missing_ok=True)
        started.join(timeout=300)
        server.stop()


def door_command(repository: Path, ports: dict[str, int]) -> list[str]:
    return [
        str(Path(sys.executable).parent / "virnucpro-triton-door"),
        str(_wheel_dirs()[0] / "bin" / "tritonserver"),
        f"--model-repository={repository}",
        f"--backend-directory={backend_directory()}",
        *(f"--{n}-address=127.0.0.1" for n in ports),
        *(f"--{n}-port={p}" for n, p in ports.items()),
    ]


def test_a_killed_doors_socket_directory_is_removed_by_the_next(tmp_path, echo_repository):
    """SIGKILL gives the door no chance to remove its sockets' directory: the next door
    removes those of doors no longer running (and only those)."""
    env = {**_server_env(None), "TMPDIR": str(tmp_path)}
    doors = []
    try:
        for _ in range(2):
            ports = {"grpc": free_port(), "http": free_port(), "metrics": free_port()}
            door = subprocess.Popen(
                door_command(echo_repository, ports), env=env, stderr=subprocess.DEVNULL
            )
            doors.append(door)
            wait_for(lambda p=ports: grpc_answers(f"127.0.0.1:{p['grpc']}"), timeout=300)
            (directory,) = tmp_path.glob(f"{PREFIX}*")  # the killed door's is gone
            assert directory.name.startswith(f"{PREFIX}{door.pid}-")
            if len(doors) == 1:
                door.send_signal(signal.SIGKILL)
                door.wait()
                # tritonserver gets SIGTERM when its door dies, and stops.
                wait_for(lambda d=str(directory): not processes_mentioning(d), timeout=120)
                assert directory.exists()
        doors[1].send_signal(signal.SIGTERM)
        assert doors[1].wait(timeout=120) == 0
        assert not list(tmp_path.glob(f"{PREFIX}*"))
    finally:
        for door in doors:
            door.kill()
            door.wait()


def status_bytes(pid: int, field: str) -> int:
    return int(Path(f"/proc/{pid}/status").read_text().split(f"{field}:")[1].split()[0]) * 1024


def rss_of(pid: int) -> int:
    return status_bytes(pid, "VmRSS")


def private_rss(pid: int) -> int:
    """Resident bytes less the shared-memory regions mapped, which are counted as regions."""
    return rss_of(pid) - status_bytes(pid, "RssShmem")


def test_bytes_in_flight_are_bounded_and_the_doors_memory_comes_back(server):
    """Three rounds of 8 concurrent 31 MiB gRPC requests (each under the size limit) would
    grow the door, tritonserver and the regions by hundreds of MB and keep them grown while
    idle: past the bytes-in-flight bound requests are refused as busy
    (RESOURCE_EXHAUSTED, which clients retry), the door's and tritonserver's memory comes back
    once idle, and the Python backend's regions (they grow to fit and never shrink; tritonserver
    maps them) hold no more than the bound per pipeline instance."""
    dna = b"A" * (31 * MB)
    door, triton = server._proc.pid, triton_pid(server)
    environ = Path(f"/proc/{triton}/environ").read_bytes().split(b"\0")
    assert b"MALLOC_MMAP_THRESHOLD_=131072" in environ  # what tritonserver runs with
    assert b"--grpc-infer-allocation-pool-size=0" in Path(f"/proc/{triton}/cmdline").read_bytes()
    # The baseline is that of a door that has forwarded a request: its gRPC paths' first use
    # sets up buffers that live as long as the door.
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        with pytest.raises(InferenceServerException, match="INVALID_ARGUMENT"):
            client.infer(repo.PIPELINE, pipeline_request(b"A" * MB))
    rss, triton_rss, shm = rss_of(door), private_rss(triton), shm_bytes(server)
    outcomes: list[str] = []

    def one() -> None:
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            try:
                client.infer(repo.PIPELINE, pipeline_request(dna))
            except InferenceServerException as error:
                outcomes.append(f"{error.status()} {error.message()}")

    for _ in range(3):
        threads = [threading.Thread(target=one) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(outcomes) == 24
    busy = [o for o in outcomes if o.startswith("StatusCode.RESOURCE_EXHAUSTED")]
    assert busy and all("the server is busy" in o for o in busy), outcomes
    assert any(o.startswith("StatusCode.INVALID_ARGUMENT") for o in outcomes)  # admitted
    wait_for(lambda: rss_of(door) < rss + 50 * MB, timeout=120)
    wait_for(lambda: private_rss(triton) < triton_rss + 50 * MB, timeout=120)
    bound = door_limits.MAX_BYTES_IN_FLIGHT
    assert shm_bytes(server) < shm + repo.PIPELINE_INSTANCES * bound + 50 * MB
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        assert client.is_model_ready(repo.PIPELINE)


def test_running_out_of_descriptors_is_one_line_of_the_log(echo_server):
    """With its descriptors used up, asyncio logs a traceback per failed accept, without end:
    one line per condition and minute, and it answers again once they are freed."""
    door = echo_server._proc.pid
    soft, hard = resource.prlimit(door, resource.RLIMIT_NOFILE)
    start = len(echo_server.log_text())
    used = len(os.listdir(f"/proc/{door}/fd"))
    connections = []
    resource.prlimit(door, resource.RLIMIT_NOFILE, (used + 8, hard))
    try:
        for url in (echo_server.http_url, echo_server.grpc_url):
            connections += [connect(url) for _ in range(30)]
        wait_for(lambda: "Too many open files" in echo_server.log_text()[start:])
    finally:
        resource.prlimit(door, resource.RLIMIT_NOFILE, (soft, hard))
        for connection in connections:
            connection.close()
    wait_for(lambda: ready_status(echo_server.http_url) == 200)
    wait_for(lambda: grpc_answers(echo_server.grpc_url))
    log = echo_server.log_text()[start:]
    assert "Traceback" not in log
    lines = [line for line in log.splitlines() if "Too many open files" in line]
    assert len(lines) <= 2 and all(line.startswith("front door: ") for line in lines), lines


def test_a_stream_passes_whole_and_its_bytes_are_counted_until_answered(capped_server):
    """ModelStreamInfer's messages count against the bytes in flight until their answers: a
    stream passes, each message answered, and nothing of it stays counted (a 30 MB request
    then fits under this server's bound of one request's size)."""
    answers: list[object] = []
    with grpcclient.InferenceServerClient(capped_server.grpc_url) as client:
        client.start_stream(callback=lambda result, error: answers.append(error or result))
        for i in range(5):
            x = grpcclient.InferInput("x", [MB // 4], "FP32")
            x.set_data_from_numpy(np.full(MB // 4, i, np.float32))
            client.async_stream_infer("echo", [x])
        client.stop_stream()
    assert len(answers) == 5 and not any(isinstance(a, Exception) for a in answers), answers
    assert sorted(a.as_numpy("y")[0] for a in answers) == [1, 2, 3, 4, 5]
    big = np.zeros(30 * MB // 4, np.float32)
    np.testing.assert_array_equal(infer(capped_server.grpc_url, big).as_numpy("y"), big + 1)
