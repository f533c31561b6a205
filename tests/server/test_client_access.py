"""The client side of access tokens and TLS against real servers: `predict` and `embed` through
a front door that asks for a token over TLS, and one that asks for a client certificate too
(mutual TLS), give the bytes an open server gives; every refusal (no token, a wrong one, an
untrusted CA, a plain-text client on a TLS port, TLS to a plain-text port, no client
certificate, a stranger's) is one line, at once, with no token in any output; the library API
and the image's health check speak the same. Certificates: certificates.py."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from certificates import make_certificates

from virnucpro_triton.client.access import Access
from virnucpro_triton.client.classify import Classifier
from virnucpro_triton.client.connection import AccessRefused
from virnucpro_triton.credentials import (
    TLS_CA_ENV,
    TLS_CERT_ENV,
    TLS_CLIENT_CERT_ENV,
    TLS_CLIENT_KEY_ENV,
    TOKEN_FILE_ENV,
)
from virnucpro_triton.door.settings import AccessSettings
from virnucpro_triton.server import EmbeddedServer

ROOT = Path(__file__).parents[2]
CLI = str(Path(sys.executable).parent / "virnucpro-triton")
INPUT = ROOT / "examples" / "contigs.fasta"
# One request at a time: each batch is computed alone, so the bytes match across servers.
PREDICT = ["--chunk-size", "300", "--batch-chunks", "4", "--max-in-flight", "1", "--no-progress"]
# A refusal is final: were it retried as a server being away, the run would outlast TIMEOUT.
NO_RETRY = ["--retry-seconds", "600"]
TIMEOUT = 300
# run.json's fields that differ from run to run, or by server and access
RUN_VARIES = {"started", "wall_seconds", "chunks_per_second", "frames_per_second", "endpoints"}
SETTINGS_VARY = {"urls", "auth", "tls", "tls_client_certificate"}


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    """ca.pem and the server's and client's certificates it signs (server, client); another CA
    (other_ca), trusted by no server here, and the certificate it signs (stranger)."""
    directory = tmp_path_factory.mktemp("certs")
    make_certificates(directory, {"client": "ca", "stranger": "other_ca"})
    return directory


@pytest.fixture(scope="module")
def tokens(tmp_path_factory) -> dict[str, Path]:
    """The server's file of two tokens, a client's file of each, and of a wrong one."""
    folder = tmp_path_factory.mktemp("tokens")
    values = {name: secrets.token_hex(32) for name in ("first", "second", "wrong")}
    files = {name: folder / name for name in values}
    for name, value in values.items():
        files[name].write_text(f"# a client's token\n{value}\n")
    files["server"] = folder / "server"
    files["server"].write_text(f"{values['first']}\n{values['second']}\n")
    return files


def secret_values(tokens: dict[str, Path]) -> list[str]:
    return [tokens[name].read_text().split()[-1] for name in ("first", "second", "wrong")]


@pytest.fixture(scope="module")
def tls_server(tiny_repository, certs, tokens, tmp_path_factory):
    """A token and TLS on every port."""
    access = AccessSettings(
        token_file=tokens["server"], tls_cert=certs / "server.pem", tls_key=certs / "server.key"
    )
    log = tmp_path_factory.mktemp("tls_server") / "tritonserver.log"
    with EmbeddedServer(tiny_repository, access=access, log_path=log) as running:
        yield running


@pytest.fixture(scope="module")
def mutual_server(tiny_repository, certs, tokens, tmp_path_factory):
    """A token, TLS, and a client certificate signed by the test CA (mutual TLS)."""
    access = AccessSettings(
        token_file=tokens["server"],
        tls_cert=certs / "server.pem",
        tls_key=certs / "server.key",
        tls_client_ca=certs / "ca.pem",
    )
    log = tmp_path_factory.mktemp("mutual_server") / "tritonserver.log"
    with EmbeddedServer(tiny_repository, access=access, log_path=log) as running:
        yield running


def cli(*args, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it: no access variable of this process's environment."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VIRNUCPRO_T")}
    return subprocess.run(
        [CLI, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=clean | (env or {}),
    )


@pytest.fixture(scope="module")
def reference(server, tmp_path_factory) -> Path:
    """predict's files from the open server (the session's: no token, no TLS)."""
    out = tmp_path_factory.mktemp("open")
    result = cli("predict", INPUT, "-o", out, "--url", server.grpc_url, *PREDICT, "--report")
    assert result.returncode == 0, result.stderr
    return out


def assert_same_run(out: Path, reference: Path) -> dict:
    """Every output file byte for byte, run.json but for its timings, urls and access; the
    access run.json records."""
    names = sorted(p.name for p in reference.iterdir())
    assert sorted(p.name for p in out.iterdir()) == names
    for name in names:
        if name not in ("run.json", "report.html"):  # the report shows timings and settings
            assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    run, expected = (json.loads((d / "run.json").read_text()) for d in (out, reference))
    for info in (run, expected):
        settings = info["settings"]
        info["access"] = {k: settings.pop(k) for k in SETTINGS_VARY}
        for key in RUN_VARIES:
            info.pop(key)
    access = run.pop("access")
    expected.pop("access")
    assert run == expected
    return access


def assert_no_token(tokens: dict[str, Path], *texts: str, folder: Path | None = None) -> None:
    files = (
        [p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file()] if folder else []
    )
    for token in secret_values(tokens):
        for text in (*texts, *files):
            assert token not in text


def test_predict_with_the_token_over_tls_equals_an_open_server(
    tls_server, certs, tokens, reference, tmp_path
):
    out = tmp_path / "out"
    result = cli(
        "predict", INPUT, "-o", out, "--url", tls_server.grpc_url, *PREDICT, "--report",
        "--token-file", tokens["first"], "--tls-ca", certs / "ca.pem",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    access = assert_same_run(out, reference)
    assert access == {
        "urls": [tls_server.grpc_url],
        "auth": "token",
        "tls": True,
        "tls_client_certificate": False,
    }
    assert_no_token(tokens, result.stdout, result.stderr, folder=out)
    # The server's log names refusals, never a token; none of the tokens is in it either.
    assert_no_token(tokens, tls_server.log_path.read_text())


def test_predict_with_mutual_tls_from_the_environment_equals_an_open_server(
    mutual_server, certs, tokens, reference, tmp_path
):
    """The access options' variables (credentials.py), as a SLURM job or a pod would set them;
    the second token of the server's file works as well as the first."""
    out = tmp_path / "out"
    env = {
        TOKEN_FILE_ENV: str(tokens["second"]),
        TLS_CA_ENV: str(certs / "ca.pem"),
        TLS_CLIENT_CERT_ENV: str(certs / "client.pem"),
        TLS_CLIENT_KEY_ENV: str(certs / "client.key"),
    }
    args = ("predict", INPUT, "-o", out, "--url", mutual_server.grpc_url, *PREDICT, "--report")
    result = cli(*args, env=env)
    assert result.returncode == 0, result.stderr
    access = assert_same_run(out, reference)
    assert (access["auth"], access["tls"], access["tls_client_certificate"]) == (
        "token",
        True,
        True,
    )
    assert_no_token(tokens, result.stdout, result.stderr, folder=out)


def test_embed_with_the_token_over_tls_equals_an_open_server(
    server, tls_server, certs, tokens, tmp_path
):
    open_out, guarded_out = tmp_path / "open.npy", tmp_path / "guarded.npy"
    result = cli("embed", INPUT, "--model", "dnabert_s", "-o", open_out, "--url", server.grpc_url)
    assert result.returncode == 0, result.stderr
    access = ["--token-file", tokens["first"], "--tls-ca", certs / "ca.pem"]
    args = ("embed", INPUT, "--model", "dnabert_s", "-o", guarded_out)
    result = cli(*args, "--url", tls_server.grpc_url, *access)
    assert result.returncode == 0, result.stderr
    assert guarded_out.read_bytes() == open_out.read_bytes()
    ids = [p.with_suffix(".ids.txt").read_bytes() for p in (guarded_out, open_out)]
    assert ids[0] == ids[1]
    assert_no_token(tokens, result.stdout, result.stderr)
    # Without the token: one line, no output.
    refused = tmp_path / "refused.npy"
    result = cli(
        *args[:-1], refused, "--url", tls_server.grpc_url, "--tls-ca", certs / "ca.pem", *NO_RETRY
    )
    assert_refused(result, "asks for an access token: give --token-file FILE")
    assert not refused.exists() and not refused.with_suffix(".ids.txt").exists()


def assert_refused(result: subprocess.CompletedProcess[str], phrase: str) -> None:
    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("virnucpro-triton: error: ") and phrase in line, line
    assert "Traceback" not in result.stderr


# (server, client access options by fixture name, what the one line says)
REFUSALS = {
    "no-token": ("tls_server", ["ca"], "asks for an access token: give --token-file FILE"),
    "wrong-token": ("tls_server", ["ca", "wrong"], "refused the access token of"),
    "untrusted-ca": ("tls_server", ["first", "stranger_ca"], "is not signed by a CA of --tls-ca"),
    "system-cas": ("tls_server", ["first", "tls"], "not signed by a CA of the system's CA bundle"),
    "plain-to-tls": ("tls_server", ["first"], "speaks TLS: give --tls"),
    "tls-to-plain": ("server", ["ca"], "does not speak TLS (a plain-text server? leave out --tls)"),
    "no-client-cert": ("mutual_server", ["first", "ca"], "asks for a client certificate"),
    "stranger-cert": (
        "mutual_server",
        ["first", "ca", "stranger_cert"],
        "refused the client certificate",
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_refused_client_is_told_in_one_line_at_once(case, request, certs, tokens, tmp_path):
    name, given, phrase = REFUSALS[case]
    target = request.getfixturevalue(name)
    options = {
        "ca": ["--tls-ca", certs / "ca.pem"],
        "tls": ["--tls"],
        "stranger_ca": ["--tls-ca", certs / "other_ca.pem"],
        "first": ["--token-file", tokens["first"]],
        "wrong": ["--token-file", tokens["wrong"]],
        "stranger_cert": [
            "--tls-client-cert",
            certs / "stranger.pem",
            "--tls-client-key",
            certs / "stranger.key",
        ],
    }
    out = tmp_path / "out"
    args = [opt for key in given for opt in options[key]]
    result = cli("predict", INPUT, "-o", out, "--url", target.grpc_url, *PREDICT, *NO_RETRY, *args)
    assert_refused(result, phrase)
    assert f"the server at {target.grpc_url}" in result.stderr
    assert (sorted(p.name for p in out.iterdir()) if out.exists() else []) == []
    assert_no_token(tokens, result.stdout, result.stderr)


def test_a_bad_access_file_is_one_line_before_any_server_is_asked(certs, tokens, tmp_path):
    short = tmp_path / "short"
    short.write_text("not-a-token\n")
    cases = [
        (["--token-file", short], f"token file {short} line 1: not a token"),
        (["--token-file", tmp_path / "none"], f"token file {tmp_path / 'none'}: No such file"),
        (
            ["--tls-ca", certs / "server.key"],
            f"CA bundle {certs / 'server.key'}: no PEM certificate",
        ),
        (
            ["--tls-client-cert", certs / "client.pem"],
            "needs both a client certificate and its key",
        ),
        (
            ["--tls-client-cert", certs / "client.pem", "--tls-client-key", certs / "server.key"],
            "the key is not that of the certificate",
        ),
        (["--tls"], "are for servers given by --url"),
    ]
    for options, phrase in cases:
        url = [] if options == ["--tls"] else ["--url", "127.0.0.1:1"]  # nothing listens there
        result = cli("predict", INPUT, "-o", tmp_path / "out", *PREDICT, *url, *options)
        assert_refused(result, phrase)
        assert "not-a-token" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_the_library_api_takes_access_and_raises_access_refused(
    tls_server, certs, tokens, monkeypatch
):
    monkeypatch.setenv(TOKEN_FILE_ENV, str(tokens["second"]))
    monkeypatch.setenv(TLS_CA_ENV, str(certs / "ca.pem"))
    access = Access.from_environment()
    assert access == Access(token_file=tokens["second"], tls=True, ca=certs / "ca.pem")

    async def classify(access: Access) -> list:
        async with Classifier(tls_server.grpc_url, 300, access=access, retry_seconds=600) as c:
            return [r async for r in c.classify([("s1", "ATG" * 200)])]

    (result,) = asyncio.run(classify(access))
    assert result.id == "s1" and len(result.chunk_verdicts()) == 2
    with pytest.raises(AccessRefused, match="refused the access token of"):
        asyncio.run(classify(Access(token_file=tokens["wrong"], ca=certs / "ca.pem")))


def health(port: int, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The image's health check (docker/Dockerfile's HEALTHCHECK) with the door's variables."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VIRNUCPRO_T")}
    command = [sys.executable, "-m", "virnucpro_triton.health", "--port", str(port)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=clean | env)


def http_port(server: EmbeddedServer) -> int:
    return int(server.http_url.rsplit(":", 1)[1])


def test_the_image_health_check_asks_as_the_door_speaks(
    server, tls_server, mutual_server, certs, tokens
):
    door = {TOKEN_FILE_ENV: str(tokens["server"]), TLS_CERT_ENV: str(certs / "server.pem")}
    client = {
        TLS_CLIENT_CERT_ENV: str(certs / "client.pem"),
        TLS_CLIENT_KEY_ENV: str(certs / "client.key"),
    }
    assert health(http_port(server), {}).returncode == 0
    assert health(http_port(tls_server), door).returncode == 0
    assert health(http_port(mutual_server), door | client).returncode == 0
    # Plain HTTP to a TLS port; TLS without the client certificate mutual TLS asks for.
    for target, env in ((tls_server, {}), (mutual_server, door)):
        result = health(http_port(target), env)
        assert result.returncode == 1
        (line,) = result.stderr.splitlines()
        assert line.startswith("not ready: ") and f"127.0.0.1:{http_port(target)}" in line
    assert_no_token(tokens, result.stderr)
