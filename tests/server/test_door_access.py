"""Access tokens and TLS at the front door (door/access.py, door/tls.py), against real servers:
every route refused without a valid token, the right token giving an open server's bytes,
tokens rotated without a restart, TLS and mutual TLS refusing the clients they should, no token
in any log, memory flat under a flood of refusals, and no server beyond loopback without a token
unless `--no-auth`. Certificates are made here with the openssl command."""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import signal
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from certificates import make_certificates
from door_requests import http_exchange
from echo_repository import ECHO_MODEL, make_repository
from inputs import STOP_FREE_CODONS
from servers import listening_addresses, wait_for
from tritonclient.utils import InferenceServerException

from virnucpro_triton import repository as repo
from virnucpro_triton.credentials import TOKEN_FILE_ENV, bearer
from virnucpro_triton.door.access import METRIC
from virnucpro_triton.door.app import main as door_main
from virnucpro_triton.door.settings import AccessSettings
from virnucpro_triton.door.tls import Tls
from virnucpro_triton.processes import free_port
from virnucpro_triton.server import EmbeddedServer, _wheel_dirs

BIN = Path(sys.executable).parent
MB = 2**20
TOKEN = "4f1c9a0e8b7d6c5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e"
ROTATED = "rotated-token-" + "9" * 40
WRONG = "e" * 64  # well formed, but no server's
MALFORMED = [
    "Bearer short",  # too short
    f"Bearer {TOKEN}!",  # a character a token cannot hold
    f"Basic {TOKEN}",  # another scheme
    TOKEN,  # no scheme
    f"Bearer {TOKEN} {TOKEN}",
]
REFUSED = [None, bearer(WRONG), *MALFORMED]


# --- certificates ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    """ca, a server certificate for 127.0.0.1 and a client's; other_ca and a stranger it signed."""
    directory = tmp_path_factory.mktemp("certs")
    make_certificates(directory, {"client": "ca", "stranger": "other_ca"})
    return directory


# --- servers -------------------------------------------------------------------------------------


def token_file(directory: Path) -> Path:
    path = directory / "tokens"
    path.write_text(f"# the server's tokens\n{TOKEN}\n")
    return path


@pytest.fixture(scope="module")
def token_server(tiny_repository, tmp_path_factory):
    """Tokens, no TLS; Triton's verbose log on, so that a token it saw would show."""
    directory = tmp_path_factory.mktemp("token_server")
    access = AccessSettings(token_file=token_file(directory))
    with EmbeddedServer(
        tiny_repository, access=access, log_path=directory / "log", log_verbose=1
    ) as server:
        yield server


@pytest.fixture(scope="module")
def tls_server(tiny_repository, tmp_path_factory, certs):
    """Tokens, also on liveness and readiness, and mutual TLS."""
    directory = tmp_path_factory.mktemp("tls_server")
    access = AccessSettings(
        token_file=token_file(directory),
        tls_cert=certs / "server.pem",
        tls_key=certs / "server.key",
        tls_client_ca=certs / "ca.pem",
        auth_health=True,
    )
    with EmbeddedServer(tiny_repository, access=access, log_path=directory / "log") as server:
        yield server


# --- clients -------------------------------------------------------------------------------------


def chunk() -> str:
    rng = random.Random(3)
    return "".join(rng.choices(STOP_FREE_CODONS, k=100))


def infer_body() -> bytes:
    return json.dumps(
        {
            "inputs": [
                {"name": repo.DNA_CHUNKS.name, "shape": [1, 1], "datatype": "BYTES",
                 "data": [chunk()]},
                {"name": repo.CHUNK_SIZE.name, "shape": [1, 1], "datatype": "INT32",
                 "data": [300]},
            ]
        }
    ).encode()  # fmt: skip


def grpc_inputs() -> list[grpcclient.InferInput]:
    dna = grpcclient.InferInput(repo.DNA_CHUNKS.name, [1, 1], "BYTES")
    dna.set_data_from_numpy(np.array([[chunk().encode()]], dtype=np.object_))
    size = grpcclient.InferInput(repo.CHUNK_SIZE.name, [1, 1], "INT32")
    size.set_data_from_numpy(np.array([[300]], dtype=np.int32))
    return [dna, size]


MODEL = f"/v2/models/{repo.PIPELINE}"
HTTP_ROUTES = [  # (method, path, body) on the HTTP port
    ("POST", f"{MODEL}/infer", infer_body()),
    ("GET", MODEL, None),
    ("GET", f"{MODEL}/config", None),
    ("GET", f"{MODEL}/stats", None),
    ("GET", "/v2/models/stats", None),
    ("GET", "/v2", None),
    ("POST", "/v2/repository/index", b"{}"),
]
HEALTH = ["/v2/health/live", "/v2/health/ready"]


def client_context(certs: Path, ca: str = "ca", identity: str | None = "client") -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=certs / f"{ca}.pem")
    if identity:
        context.load_cert_chain(certs / f"{identity}.pem", certs / f"{identity}.key")
    return context


def request(
    address: str,
    method: str,
    path: str,
    body: bytes | None = None,
    authorization: str | None = None,
    context: ssl.SSLContext | None = None,
) -> tuple[int, http.client.HTTPMessage, bytes]:
    host, port = address.rsplit(":", 1)
    if context is None:
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
    else:
        connection = http.client.HTTPSConnection(host, int(port), timeout=60, context=context)
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if authorization is not None:
        headers["Authorization"] = authorization
    try:
        connection.request(method, path, body=body, headers=headers)
        answer = connection.getresponse()
        return answer.status, answer.headers, answer.read()
    finally:
        connection.close()


def metrics_address(server: EmbeddedServer) -> str:
    return f"{server.grpc_url.rsplit(':', 1)[0]}:{server.ports['metrics']}"


def grpc_client(
    server: EmbeddedServer,
    certs: Path | None = None,
    ca: str = "ca",
    identity: str | None = "client",
) -> grpcclient.InferenceServerClient:
    """A gRPC client of `server`; with `certs`, over TLS trusting `ca` and showing `identity`."""
    if certs is None:
        return grpcclient.InferenceServerClient(server.grpc_url)
    files = {"root_certificates": certs / f"{ca}.pem"}
    if identity:
        files |= {
            "private_key": certs / f"{identity}.key",
            "certificate_chain": certs / f"{identity}.pem",
        }
    return grpcclient.InferenceServerClient(
        server.grpc_url, ssl=True, **{k: str(v) for k, v in files.items()}
    )


def grpc_calls(client: grpcclient.InferenceServerClient, headers: dict | None) -> list:
    """Each gRPC route once with `headers`: the error of each, or None where it passed."""
    calls = [
        lambda: client.infer(repo.PIPELINE, grpc_inputs(), headers=headers),
        lambda: client.get_model_metadata(repo.PIPELINE, headers=headers),
        lambda: client.get_model_config(repo.PIPELINE, headers=headers),
        lambda: client.get_inference_statistics(repo.PIPELINE, headers=headers),
        lambda: client.get_server_metadata(headers=headers),
        lambda: client.get_model_repository_index(headers=headers),
        lambda: stream(client, headers),
    ]
    errors = []
    for call in calls:
        try:
            call()
            errors.append(None)
        except InferenceServerException as e:
            errors.append(e)
    return errors


def stream(client: grpcclient.InferenceServerClient, headers: dict | None) -> np.ndarray:
    """One request on the gRPC stream (ModelStreamInfer); its probabilities."""
    answers = []
    client.start_stream(
        callback=lambda result, error: answers.append((result, error)), headers=headers
    )
    try:
        client.async_stream_infer(repo.PIPELINE, grpc_inputs())
    except InferenceServerException:
        pass  # the server ended the stream already: its error came through the callback
    finally:
        client.stop_stream()
    ((result, error),) = answers
    if error is not None:
        raise error
    return result.as_numpy(repo.FRAME_PROBABILITIES.name)


def counts(server: EmbeddedServer, context: ssl.SSLContext | None = None) -> dict[str, int]:
    """The door's refusals per port, from its metrics port (with the token)."""
    status, _, body = request(
        metrics_address(server), "GET", "/metrics", None, bearer(TOKEN), context
    )
    assert status == 200
    text = body.decode()
    assert "nv_inference_count" in text  # Triton's own metrics are served too
    return {p: int(n) for p, n in re.findall(rf'^{METRIC}{{port="(\w+)"}} (\d+)$', text, re.M)}


def pipeline_counts(server: EmbeddedServer) -> tuple[int, int]:
    """(successful, failed) pipeline requests tritonserver counted, asked with the token."""
    with grpc_client(server) as client:
        stats = client.get_inference_statistics(
            repo.PIPELINE, headers={"authorization": bearer(TOKEN)}, as_json=True
        )
    found = stats["model_stats"][0]["inference_stats"]
    return int(found["success"].get("count", 0)), int(found["fail"].get("count", 0))


def assert_refused_http(status: int, headers: http.client.HTTPMessage) -> None:
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Bearer ")


def assert_unauthenticated(error: InferenceServerException | None) -> None:
    assert error is not None and "UNAUTHENTICATED" in str(error.status()), error


# --- tokens --------------------------------------------------------------------------------------


def test_every_route_refuses_a_missing_wrong_or_malformed_token(token_server):
    """HTTP infer, model metadata and config, statistics, server metadata, the repository index
    and metrics; gRPC the same and the stream: 401 with `WWW-Authenticate: Bearer` or
    UNAUTHENTICATED, each counted on its port; tritonserver saw none of them."""
    before, served = counts(token_server), pipeline_counts(token_server)
    for authorization in REFUSED:
        for method, path, body in HTTP_ROUTES:
            status, headers, _ = request(token_server.http_url, method, path, body, authorization)
            assert_refused_http(status, headers)
        status, headers, _ = request(
            metrics_address(token_server), "GET", "/metrics", None, authorization
        )
        assert_refused_http(status, headers)
        with grpc_client(token_server) as client:
            metadata = None if authorization is None else {"authorization": authorization}
            for error in grpc_calls(client, metadata):
                assert_unauthenticated(error)
    # Refused on its head: the 1 MB body it announces is never sent, and not waited for; a
    # client that holds its body back until `100 Continue` gets the refusal instead.
    head = b"POST %s/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n" % (MODEL.encode(), MB)
    assert http_exchange(token_server.http_url, head + b"\r\n")[0] == 401
    expect = head + b"Expect: 100-continue\r\n"
    assert http_exchange(token_server.http_url, expect + b"\r\n")[0] == 401
    token = b"Authorization: %s\r\n\r\n" % bearer(TOKEN).encode()
    assert http_exchange(token_server.http_url, expect + token)[0] == 100
    after = counts(token_server)
    assert after["http"] - before["http"] == len(REFUSED) * len(HTTP_ROUTES) + 2
    assert after["metrics"] - before["metrics"] == len(REFUSED)
    assert after["grpc"] - before["grpc"] == len(REFUSED) * 7
    assert pipeline_counts(token_server) == served


def test_health_is_open_to_probes_unless_closed_too(token_server, tls_server, certs):
    for path in HEALTH:
        assert request(token_server.http_url, "GET", path)[0] == 200
    with grpc_client(token_server) as client:
        assert client.is_server_live() and client.is_server_ready()
    # --auth-health: closed to all but the token's holders.
    context = client_context(certs)
    for path in HEALTH:
        status, headers, _ = request(tls_server.http_url, "GET", path, context=context)
        assert_refused_http(status, headers)
        assert request(tls_server.http_url, "GET", path, None, bearer(TOKEN), context)[0] == 200
    with grpc_client(tls_server, certs) as client:
        for probe in (client.is_server_live, client.is_server_ready):
            with pytest.raises(InferenceServerException, match="UNAUTHENTICATED|access token"):
                probe()
            assert probe(headers={"authorization": bearer(TOKEN)})


def answers(server: EmbeddedServer, certs: Path | None = None) -> dict[str, object]:
    """What a client with the token gets from each route of `server` (bytes as they came)."""
    context = client_context(certs) if certs else None
    found: dict[str, object] = {}
    for method, path, body in HTTP_ROUTES[:3]:  # infer, model metadata and config
        status, _, content = request(server.http_url, method, path, body, bearer(TOKEN), context)
        assert status == 200, content
        # A config's parameters are a protobuf map, serialized in no fixed order.
        found[f"{method} {path}"] = json.loads(content) if path.endswith("config") else content
    headers = {"authorization": bearer(TOKEN)}
    with grpc_client(server, certs) as client:
        result = client.infer(repo.PIPELINE, grpc_inputs(), headers=headers).get_response()
        found["grpc infer"] = (list(result.outputs), list(result.raw_output_contents))
        found["grpc stream"] = stream(client, headers).tobytes()
        found["grpc config"] = client.get_model_config(repo.PIPELINE, headers=headers)
    return found


def test_the_right_token_gives_the_bytes_of_an_open_server(server, token_server, tls_server, certs):
    """The same answers, byte for byte, from an open server, one with tokens and one with tokens
    and mutual TLS (the open one ignores the token it is sent)."""
    expected = answers(server)
    assert answers(token_server) == expected
    assert answers(tls_server, certs) == expected


def accepted(server: EmbeddedServer, token: str) -> bool:
    return request(server.http_url, "GET", MODEL, None, bearer(token))[0] == 200


def test_a_token_is_rotated_without_a_restart(token_server):
    """A new token written in place of the old one works, and the old one is refused; a file
    made malformed, then removed, keeps the last good tokens and says so in one line each."""
    path = token_server.access.token_file
    pid = token_server.pid
    try:
        path.write_text(f"{ROTATED}\n")
        wait_for(lambda: accepted(token_server, ROTATED))
        assert not accepted(token_server, TOKEN)
        path.write_text("not a token\n")
        wait_for(
            lambda: (
                accepted(token_server, ROTATED) and "line 1: not a token" in token_server.log_text()
            )
        )
        path.unlink()
        wait_for(
            lambda: accepted(token_server, ROTATED) and "No such file" in token_server.log_text()
        )
        log = token_server.log_text()
        assert log.count("the last good tokens stay in force") == 2, log
        assert not accepted(token_server, TOKEN)
    finally:
        token_file(path.parent)
        wait_for(lambda: accepted(token_server, TOKEN))
    assert token_server.pid == pid  # no restart


def test_no_token_appears_in_the_logs(token_server, tls_server, certs):
    """Neither the right token nor wrong ones, in the door's or Triton's (verbose) log."""
    for authorization in (bearer(TOKEN), bearer(WRONG), f"Bearer {TOKEN}!"):
        request(token_server.http_url, "POST", f"{MODEL}/infer", infer_body(), authorization)
        with grpc_client(token_server) as client:
            grpc_calls(client, {"authorization": authorization})
    context = client_context(certs)
    request(tls_server.http_url, "GET", MODEL, None, bearer(WRONG), context)
    wait_for(lambda: "refused an HTTP request from 127.0.0.1:" in tls_server.log_text())
    for log in (token_server.log_text(), tls_server.log_text()):
        assert "refused a gRPC call from 127.0.0.1:" in log or "HTTP request" in log
        for secret in (TOKEN, WRONG, TOKEN[:16]):
            assert secret not in log


def rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) * 1024


def test_a_thousand_refusals_leave_memory_flat_and_clients_served(token_server):
    """1,000 unauthenticated requests (HTTP infer with 64 KB bodies, metrics, gRPC infer with
    64 KB elements, from four threads) while a client with the token keeps being answered: the
    door's memory ends within 20 MB of where it began, and the log is not flooded."""
    door = token_server.pid
    big = json.dumps({"inputs": [{"name": "DNA", "data": ["A" * 65536]}]}).encode()
    element = grpcclient.InferInput(repo.DNA_CHUNKS.name, [1, 1], "BYTES")
    element.set_data_from_numpy(np.array([[b"A" * 65536]], dtype=np.object_))

    def flood(n: int) -> None:
        with grpc_client(token_server) as client:
            for i in range(n):
                if i % 2:
                    with pytest.raises(InferenceServerException, match="UNAUTHENTICATED|token"):
                        client.infer(
                            repo.PIPELINE, [element], headers={"authorization": bearer(WRONG)}
                        )
                elif i % 10:
                    assert request(token_server.http_url, "POST", f"{MODEL}/infer", big)[0] == 401
                else:
                    assert request(metrics_address(token_server), "GET", "/metrics")[0] == 401

    flood(40)  # the door's buffers at their working size
    baseline, refusals, log_lines = (
        rss(door),
        counts(token_server),
        token_server.log_text().count("refused"),
    )
    failures: list[BaseException] = []

    def run(n: int) -> None:
        try:
            flood(n)
        except BaseException as e:  # noqa: BLE001 - reported below
            failures.append(e)

    threads = [threading.Thread(target=run, args=(250,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    served = 0
    with grpc_client(token_server) as client:
        while served == 0 or any(t.is_alive() for t in threads):
            result = client.infer(
                repo.PIPELINE, grpc_inputs(), headers={"authorization": bearer(TOKEN)}
            )
            assert result.as_numpy(repo.FRAME_PROBABILITIES.name).shape == (1, 6, 2)
            served += 1
    for thread in threads:
        thread.join()
    assert not failures, failures
    after = counts(token_server)
    assert sum(after.values()) - sum(refusals.values()) == 1000
    wait_for(lambda: rss(door) < baseline + 20 * MB, timeout=60)
    assert token_server.log_text().count("refused") - log_lines < 100  # not one per refusal
    assert served >= 1


# --- TLS -----------------------------------------------------------------------------------------


def tls_refused(address: str, path: str, context: ssl.SSLContext | None) -> None:
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException, OSError)):
        request(address, "GET", path, None, bearer(TOKEN), context)


def test_tls_refuses_untrusting_plain_text_and_certificateless_clients(tls_server, certs):
    """A client that does not trust the server's CA, a plain-text client, a client without a
    certificate and one whose certificate another CA signed: refused on every port, over HTTP
    and gRPC. With the CA's client certificate but no token: still 401."""
    for address, path in [(tls_server.http_url, MODEL), (metrics_address(tls_server), "/metrics")]:
        tls_refused(address, path, client_context(certs, "other_ca"))
        tls_refused(address, path, None)
        tls_refused(address, path, client_context(certs, identity=None))
        tls_refused(address, path, client_context(certs, identity="stranger"))
        status, headers, _ = request(address, "GET", path, None, None, client_context(certs))
        assert_refused_http(status, headers)
    headers = {"authorization": bearer(TOKEN)}
    for client in (
        grpc_client(tls_server, certs, ca="other_ca"),
        grpc_client(tls_server),
        grpc_client(tls_server, certs, identity=None),
        grpc_client(tls_server, certs, identity="stranger"),
    ):
        with client, pytest.raises(InferenceServerException) as refused:
            client.get_model_metadata(repo.PIPELINE, headers=headers, client_timeout=30)
        assert "UNAVAILABLE" in str(refused.value.status()), refused.value
    with grpc_client(tls_server, certs) as client:
        assert client.get_model_metadata(repo.PIPELINE, headers=headers).name == repo.PIPELINE
        for error in grpc_calls(client, None):
            assert_unauthenticated(error)


# --- settings ------------------------------------------------------------------------------------


def door(capsys, *args: str | Path) -> str:
    """The door's main with `args`: it must refuse them; its one line on stderr."""
    with pytest.raises(SystemExit) as exit_:
        door_main([*map(str, args)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_bad_access_settings_are_one_line_before_tritonserver_starts(
    capsys, certs, tmp_path, monkeypatch
):
    tritonserver = str(_wheel_dirs()[0] / "bin" / "tritonserver")
    monkeypatch.delenv(TOKEN_FILE_ENV, raising=False)
    local = "--grpc-address=127.0.0.1 --http-address=127.0.0.1 --metrics-address=127.0.0.1".split()
    bad_tokens = tmp_path / "bad"
    bad_tokens.write_text(f"{TOKEN}\nshort\n")
    server_pem, server_key = certs / "server.pem", certs / "server.key"
    cases = [
        ([tritonserver], "listening on 0.0.0.0 (beyond loopback) without access tokens"),
        ([tritonserver, local[0]], "listening on 0.0.0.0"),  # gRPC on loopback, HTTP not
        (["--token-file", tmp_path / "missing", tritonserver], "missing: No such file"),
        (["--token-file", bad_tokens, tritonserver], "bad line 2: not a token"),
        (["--no-auth", "--token-file", bad_tokens, tritonserver], "exclude each other"),
        (["--auth-health", tritonserver, *local], "--auth-health needs --token-file"),
        (["--tls-cert", server_pem, tritonserver, *local], "go together"),
        (["--tls-cert", server_pem, "--tls-key", certs / "client.key", tritonserver, *local],
         "KEY_VALUES_MISMATCH"),
        (["--tls-cert", certs / "server.csr", "--tls-key", server_key, tritonserver, *local],
         "server.csr"),
        (["--tls-cert", server_pem, "--tls-key", server_key, "--tls-client-ca",
          certs / "nothing.pem", tritonserver, *local], "nothing.pem: No such file"),
    ]  # fmt: skip
    for args, message in cases:
        assert message in door(capsys, *args), args
    # The token file also comes from its variable.
    monkeypatch.setenv(TOKEN_FILE_ENV, str(bad_tokens))
    assert "bad line 2" in door(capsys, tritonserver)


def test_serve_beyond_loopback_needs_a_token_or_no_auth(tmp_path, monkeypatch):
    repository = make_repository(tmp_path / "echo", echo=ECHO_MODEL)
    monkeypatch.delenv(TOKEN_FILE_ENV, raising=False)
    ports = [free_port() for _ in range(3)]
    command = [
        str(BIN / "virnucpro-triton"), "serve", "--repository", str(repository), "--address",
        "0.0.0.0", "--grpc-port", str(ports[0]), "--http-port", str(ports[1]), "--metrics-port",
        str(ports[2]),
    ]  # fmt: skip
    refused = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2
    assert refused.stderr.splitlines() == [
        "virnucpro-triton: error: listening on 0.0.0.0 (beyond loopback) without access tokens: "
        f"give --token-file FILE (or {TOKEN_FILE_ENV}), or --no-auth to let anyone who reaches "
        "the ports use the server"
    ]
    process = subprocess.Popen(
        [*command, "--no-auth"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for(
            lambda: listening_addresses(ports[2]) == {"0.0.0.0"} or process.poll() is not None,
            timeout=300,
        )
        assert all(listening_addresses(p) for p in ports), process.poll()
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert os.environ.get(TOKEN_FILE_ENV) is None


def test_mutual_tls_trusts_the_client_ca_alone(certs):
    """Not the system's CAs too: a certificate any public CA signed is not a client's."""
    tls = Tls.load(certs / "server.pem", certs / "server.key", certs / "ca.pem")
    ((subject,),) = (c["subject"] for c in tls.context.get_ca_certs())
    assert subject == (("commonName", "ca"),)
    assert tls.context.verify_mode == ssl.CERT_REQUIRED
    assert "server.key" not in repr(tls) and "PRIVATE KEY" not in repr(tls)
