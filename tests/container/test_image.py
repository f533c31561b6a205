"""The container tier: docker/Dockerfile, unchanged, built on a local stand-in of the NGC base
and served the way compose serves it (read-only root, tmpfs /tmp, uid 1000) on a repository
that root exported with the default umask.

`make test-container` runs it after tests/container/setup.sh (engine, Compose v2, the
stand-in); `make test` and a plain `pytest` leave it out. Containers and compose projects get
unique names and random host ports, and are removed whatever the outcome. Times go to
build/container-timings.json.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from certificates import make_certificates
from door_requests import OVERSIZE, http_exchange, oversize_http_head, pipeline_request
from tritonclient.grpc import InferenceServerClient
from tritonclient.utils import InferenceServerException

from virnucpro_triton.credentials import (
    AUTH_HEADER,
    TLS_CERT_ENV,
    TLS_KEY_ENV,
    TOKEN_FILE_ENV,
    bearer,
)
from virnucpro_triton.processes import free_port
from virnucpro_triton.repository import PIPELINE
from virnucpro_triton.results.outputs import PREDICTIONS, SUMMARY, VERDICTS

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker" / "compose.yaml"
COMPOSE_TLS = ROOT / "docker" / "compose.tls.yaml"
STANDIN = os.environ.get("VIRNUCPRO_STANDIN", "virnucpro-ngc-standin:24.10-py3")
IMAGE = "virnucpro-triton:container-test"
CLI = Path(sys.executable).with_name("virnucpro-triton")
TIMINGS = ROOT / "build" / "container-timings.json"
INPUT = ROOT / "examples" / "contigs.fasta"
RESULTS = (PREDICTIONS, VERDICTS, SUMMARY)
# One request at a time: each batch is computed alone, so results are byte-identical.
PREDICT = ("--chunk-size", "300", "--batch-chunks", "4", "--max-in-flight", "1", "--no-progress")
STARTUP_SECONDS = 900  # tiny models on 2 busy cores: about a minute; generous for CI
BUILD_SECONDS = 3600


def run(args, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=timeout, **kwargs
    )


def docker(*args, timeout: float = 300) -> str:
    result = run(["docker", *args], timeout=timeout)
    if result.returncode != 0:
        pytest.fail(f"docker {' '.join(map(str, args))} failed: {result.stderr.strip()[-2000:]}")
    return result.stdout.strip()


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, log: Callable[[], str] = str
) -> float:
    """Poll `condition` until it holds; the seconds it took. On time-out, the end of `log()`."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{log()[-4000:]}")
        time.sleep(0.5)
    return time.monotonic() - start


def service() -> dict:
    (triton,) = yaml.safe_load(COMPOSE.read_text())["services"].values()
    return triton


def seconds(duration: str) -> int:
    """A compose duration of whole seconds or minutes (60s, 15m)."""
    return int(duration[:-1]) * {"s": 1, "m": 60}[duration[-1]]


def compose_env(**extra: str) -> dict[str, str]:
    """The environment of a user's shell plus the stand-in base and the test image's tag; no
    make variables of the `make test-container` that runs this."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    return env | {"BASE_IMAGE": STANDIN, "VIRNUCPRO_IMAGE": IMAGE} | extra


class Access:
    """A token file and TLS files on the host, as `make serve` is given them: readable by the
    container's uid 1000 (the key too: openssl writes it 0600)."""

    def __init__(self, directory: Path):
        make_certificates(directory, {})
        self.ca = directory / "ca.pem"
        (directory / "server.key").chmod(0o644)
        self.token_file = directory / "token"
        self.token_file.write_text(secrets.token_hex(32) + "\n")
        self.token = self.token_file.read_text().strip()
        self.files = {
            TOKEN_FILE_ENV: self.token_file,
            TLS_CERT_ENV: directory / "server.pem",
            TLS_KEY_ENV: directory / "server.key",
        }

    @property
    def header(self) -> dict[str, str]:
        return {AUTH_HEADER: bearer(self.token)}


@pytest.fixture(scope="session")
def access(tmp_path_factory) -> Access:
    return Access(tmp_path_factory.mktemp("access"))


def compose_access_flags(access: Access, tls: bool) -> list[str]:
    """`docker run` flags for what compose.yaml (and compose.tls.yaml) set: each secret's host
    file (named by the variable in its `file:`) mounted read-only under /run/secrets, and the
    service's variables that point the door at them."""
    flags = []
    for path in [COMPOSE, *[COMPOSE_TLS] * tls]:
        document = yaml.safe_load(path.read_text())
        (triton,) = document["services"].values()
        for name in triton["secrets"]:
            variable = re.match(r"\$\{(\w+):\?", document["secrets"][name]["file"]).group(1)
            flags += ["-v", f"{access.files[variable]}:/run/secrets/{name}:ro"]
        flags += [arg for value in triton["environment"] if "=" in value for arg in ("-e", value)]
    return flags


@pytest.fixture(scope="session")
def timings() -> Iterator[dict[str, float]]:
    measured: dict[str, float] = {}
    yield measured
    TIMINGS.parent.mkdir(exist_ok=True)
    TIMINGS.write_text(json.dumps(measured, indent=2) + "\n")


@pytest.fixture(scope="session")
def image(timings, access) -> str:
    """docker/Dockerfile built as `make serve` builds it (compose), on the stand-in base."""
    if run(["docker", "info"]).returncode != 0:
        pytest.fail("no Docker engine answers; run tests/container/setup.sh (make test-container)")
    if run(["docker", "image", "inspect", STANDIN]).returncode != 0:
        pytest.fail(f"no {STANDIN} image; run tests/container/setup.sh (make test-container)")
    start = time.monotonic()
    # compose.yaml requires these; the build ignores them
    env = compose_env(VIRNUCPRO_MODELS=str(ROOT), VIRNUCPRO_TOKEN_FILE=str(access.token_file))
    result = run(["docker", "compose", "-f", COMPOSE, "build"], timeout=BUILD_SECONDS, env=env)
    if result.returncode != 0:
        pytest.fail(f"building docker/Dockerfile failed:\n{result.stderr[-4000:]}")
    timings["image_build_s"] = round(time.monotonic() - start, 1)
    timings["image_size_gb"] = round(
        int(docker("image", "inspect", "-f", "{{.Size}}", IMAGE)) / 1e9, 2
    )
    return IMAGE


@pytest.fixture(scope="session")
def root_export(tmp_path_factory) -> Path:
    """`export --tiny` as root with the default umask: files that uid 1000 must read."""
    out = tmp_path_factory.mktemp("export") / "repository"
    result = run([CLI, "export", "--tiny", "--out", out], umask=0o022)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def reference(root_export, tmp_path_factory) -> Path:
    """What predict writes with the embedded server on the same repository."""
    out = tmp_path_factory.mktemp("embedded")
    result = run([CLI, "predict", INPUT, "-o", out, "--repository", root_export, *PREDICT], 900)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def predict_through(url: str, out: Path, access: Access, *options) -> None:
    token = ["--token-file", access.token_file]
    result = run([CLI, "predict", INPUT, "-o", out, "--url", url, *PREDICT, *token, *options], 600)
    assert result.returncode == 0, result.stderr[-3000:]


def assert_same_results(out: Path, reference: Path) -> None:
    for name in RESULTS:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name


class Container:
    """`docker run` of the image with what compose.yaml sets (and compose.tls.yaml, `tls`),
    removed on exit."""

    def __init__(
        self,
        image: str,
        repository: Path,
        access: Access,
        health_interval: str = "2s",
        tls: bool = False,
    ):
        self.name = f"virnucpro-test-{uuid.uuid4().hex[:10]}"
        triton = service()
        flags = ["--shm-size", triton["shm_size"]] + ["--read-only"] * triton["read_only"]
        flags += compose_access_flags(access, tls)
        for mount in triton["tmpfs"]:
            flags += ["--tmpfs", mount]
        # Docker checks health every --interval, also during the start period: a short one
        # here instead of the image's 30 s.
        flags += ["--health-interval", health_interval]
        ports = [f"127.0.0.1::{port}" for port in (8000, 8001)]  # random free host ports
        self.args = [
            "run", "--detach", "--name", self.name, *flags,
            *[arg for port in ports for arg in ("-p", port)],
            "-v", f"{repository}:/models:ro", image,
        ]  # fmt: skip

    def __enter__(self) -> Container:
        self.started = time.monotonic()
        docker(*self.args)
        return self

    def __exit__(self, *exc) -> None:
        run(["docker", "rm", "--force", self.name])

    def state(self) -> dict:
        return json.loads(docker("inspect", "--format", "{{json .State}}", self.name))

    def exited(self) -> bool:
        return self.state()["Status"] == "exited"

    def logs(self) -> str:
        result = run(["docker", "logs", self.name])
        return result.stdout + result.stderr

    def address(self, port: int) -> str:
        return docker("port", self.name, f"{port}/tcp").splitlines()[0]

    def exec(self, *command: str) -> subprocess.CompletedProcess[str]:
        return run(["docker", "exec", self.name, *command])

    def wait_healthy(self) -> float:
        def healthy() -> bool:
            state = self.state()
            if state["Status"] != "running":
                pytest.fail(f"{self.name} stopped ({state['Status']}):\n{self.logs()[-4000:]}")
            return state["Health"]["Status"] == "healthy"

        wait_until(healthy, STARTUP_SECONDS, f"{self.name} to turn healthy", self.logs)
        return time.monotonic() - self.started


@pytest.fixture(scope="module")
def served(image, root_export, access, timings) -> Iterator[Container]:
    with Container(image, root_export, access) as container:
        timings["start_to_healthy_s"] = round(container.wait_healthy(), 1)
        yield container


def test_the_image_serves_a_root_export_as_uid_1000_on_a_read_only_root(
    served, root_export, access
):
    assert served.state()["Health"]["Status"] == "healthy"
    assert served.exec("id", "-u").stdout.strip() == "1000"
    denied = served.exec("touch", "/opt/venv/written")
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr
    assert served.exec("touch", "/tmp/written").returncode == 0  # the tmpfs
    weights = root_export / "esm2" / "1" / "weights.safetensors"
    assert weights.stat().st_uid == 0 and weights.stat().st_mode & 0o777 == 0o644
    # Every model is READY: the served repository index, as the server sees it.
    url = f"http://{served.address(8000)}/v2/repository/index"
    request = urllib.request.Request(url, data=b"{}", method="POST", headers=access.header)
    with urllib.request.urlopen(request, timeout=10) as response:
        index = json.load(response)
    assert {m["name"] for m in index} == {p.name for p in root_export.iterdir()}
    assert {m["state"] for m in index} == {"READY"}, index


def test_the_installed_project_carries_its_spdx_licence(served):
    """Built by the pinned setuptools, which writes pyproject's SPDX `license` as such."""
    metadata = served.exec(
        "python3", "-c", "import importlib.metadata as m; print(m.metadata('virnucpro-triton'))"
    ).stdout
    assert "License-Expression: MIT" in metadata


def test_predict_through_the_container_equals_the_embedded_server(
    served, reference, access, tmp_path
):
    predict_through(served.address(8001), tmp_path, access)
    assert_same_results(tmp_path, reference)


def test_the_container_refuses_oversize_requests_at_its_ports(served, access):
    """The image's ENTRYPOINT is the front door: the same request limit as the embedded server."""
    with InferenceServerClient(served.address(8001)) as client:
        with pytest.raises(InferenceServerException, match="larger than max"):
            client.infer(PIPELINE, pipeline_request(b"A" * OVERSIZE), headers=access.header)
        assert client.is_model_ready(PIPELINE, headers=access.header)
    authorization = b"Authorization: %s\r\n" % bearer(access.token).encode()
    length = b"Content-Length: %d\r\n" % OVERSIZE
    head = oversize_http_head(f"/v2/models/{PIPELINE}/infer", length + authorization)
    assert http_exchange(served.address(8000), head)[0] == 413


def test_the_container_asks_for_the_token_and_tls_as_compose_sets_them(
    image, root_export, reference, access, tmp_path
):
    """compose.yaml's token and compose.tls.yaml's certificate: the health check turns healthy
    through TLS, `predict --url` with the token and the CA writes the same bytes, and a client
    without the token or without TLS is refused in one line; no token in the server's log."""
    with Container(image, root_export, access, tls=True) as container:
        container.wait_healthy()
        url = container.address(8001)
        predict_through(url, tmp_path / "out", access, "--tls-ca", access.ca)
        assert_same_results(tmp_path / "out", reference)
        for options, phrase in (
            (["--tls-ca", access.ca], "asks for an access token"),
            (["--token-file", access.token_file], "speaks TLS: give --tls"),
        ):
            refused = run([CLI, "predict", INPUT, "-o", tmp_path / "refused", "--url", url,
                           *PREDICT, "--retry-seconds", "600", *options], 300)  # fmt: skip
            assert refused.returncode == 1 and phrase in refused.stderr, refused.stderr
            assert len(refused.stderr.splitlines()) == 1
        logs = container.logs()
    assert access.token not in logs


def test_docker_stop_ends_triton_within_its_grace_period(served, timings):
    """Triton is PID 1: SIGTERM must end it, not the SIGKILL at the end of the grace period."""
    grace = seconds(service()["stop_grace_period"])
    start = time.monotonic()
    docker("stop", "--time", str(grace), served.name, timeout=grace + 60)
    timings["docker_stop_s"] = round(time.monotonic() - start, 1)
    state = served.state()
    assert state["Status"] == "exited" and not state["OOMKilled"]
    assert state["ExitCode"] == 0, f"exit code {state['ExitCode']} (137: killed at the deadline)"
    assert timings["docker_stop_s"] < grace


def test_an_unreadable_weights_file_is_reported_as_permission_denied(
    image, root_export, access, tmp_path
):
    """A repository exported before files were made readable: the server names the file."""
    repository = tmp_path / "repository"
    shutil.copytree(root_export, repository)
    weights = repository / "esm2" / "1" / "weights.safetensors"
    weights.chmod(0o600)  # what safetensors' save_file leaves
    with Container(image, repository, access) as container:
        wait_until(container.exited, STARTUP_SECONDS, "the server to give up", container.logs)
        logs = container.logs()
        assert container.state()["ExitCode"] != 0
    assert "/models/esm2/1/weights.safetensors: permission denied (mode 0600" in logs, logs[-4000:]
    assert "FileNotFoundError" not in logs


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def ready(http_port: int) -> bool:
    try:
        url = f"http://127.0.0.1:{http_port}/v2/health/ready"
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError):
        return False


def test_make_serve_without_gpus_comes_up_answers_and_comes_down(
    image, root_export, reference, access, tmp_path
):
    project = f"virnucpro-test-{uuid.uuid4().hex[:10]}"
    http, grpc, metrics = free_port(), free_port(), free_port()
    env = compose_env(
        COMPOSE_PROJECT_NAME=project,
        VIRNUCPRO_HTTP_PORT=str(http),
        VIRNUCPRO_GRPC_PORT=str(grpc),
        VIRNUCPRO_METRICS_PORT=str(metrics),
        VIRNUCPRO_TOKEN_FILE=str(access.token_file),
    )
    make = shutil.which("make") or "make"
    log = tmp_path / "make-serve.log"
    command = [make, "serve", "GPUS=none", f"REPOSITORY={root_export}"]
    down = ["docker", "compose", "-f", COMPOSE, "down", "--remove-orphans", "--timeout", "60"]
    containers = ["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}"]
    with open(log, "w") as output:
        serve = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def answering() -> bool:
            if serve.poll() is not None:
                pytest.fail(f"make serve exited ({serve.returncode}):\n{log.read_text()[-4000:]}")
            return ready(http)

        wait_until(answering, STARTUP_SECONDS, "make serve to answer", log.read_text)
        predict_through(f"127.0.0.1:{grpc}", tmp_path / "out", access)
        assert_same_results(tmp_path / "out", reference)
        # Ctrl-C, as a user stops it: compose stops the container and make returns.
        os.killpg(serve.pid, signal.SIGINT)
        serve.wait(timeout=seconds(service()["stop_grace_period"]) + 60)
        stopped = run(["docker", "ps", "-q", *containers[3:]]).stdout.split()
        assert stopped == [], "the container still runs after make serve ended"
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait()
        result = run(down, env=env | {"VIRNUCPRO_MODELS": str(root_export)}, timeout=180)
    assert result.returncode == 0, result.stderr
    assert run(containers).stdout.split() == []
    assert all(port_is_free(port) for port in (http, grpc, metrics))
