"""Certificates for the tests of TLS, made by the openssl command: a CA, a server certificate
for 127.0.0.1 (and localhost) signed by it, and a client certificate signed by it for mutual
TLS. Each call makes a new CA, so a second call's CA is one that the first's server does not
chain to (a client that trusts it refuses that server)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

# P-256: small keys made at once, which OpenSSL, BoringSSL (gRPC) and Python's ssl all take.
_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
_DAYS = ["-days", "2"]


@dataclass(frozen=True)
class Certificates:
    ca: Path  # the CA's certificate: the bundle a client trusts, the client CA of a server
    server_cert: Path  # for IP 127.0.0.1 and DNS localhost
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def _sign(directory: Path, name: str, subject: str, extensions: str) -> tuple[Path, Path]:
    """A key and a certificate signed by the directory's CA."""
    key, request = directory / f"{name}.key", directory / f"{name}.csr"
    cert, ext = directory / f"{name}.pem", directory / f"{name}.ext"
    _openssl("req", *_KEY, "-keyout", key, "-out", request, "-subj", subject)
    ext.write_text(extensions)
    _openssl(
        "x509", "-req", "-in", request, "-CA", directory / "ca.pem", "-CAkey",
        directory / "ca.key", "-set_serial", "2" if name == "server" else "3", *_DAYS,
        "-extfile", ext, "-out", cert,
    )  # fmt: skip
    return cert, key


def make_certificates(directory: Path) -> Certificates:
    """A CA and the server and client certificates it signs, as PEM files in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = directory / "ca.pem"
    _openssl(
        "req", "-x509", *_KEY, "-keyout", directory / "ca.key", "-out", ca, *_DAYS,
        "-subj", f"/CN=VirNucPro test CA {directory.name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    server_cert, server_key = _sign(
        directory,
        "server",
        "/CN=127.0.0.1",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    client_cert, client_key = _sign(
        directory, "client", "/CN=virnucpro test client", "extendedKeyUsage=clientAuth\n"
    )
    return Certificates(ca, server_cert, server_key, client_cert, client_key)
