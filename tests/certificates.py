"""Certificates made with the openssl command: a CA, a server's for 127.0.0.1, clients'."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path


def _openssl(directory: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)


def make_certificates(directory: Path, clients: dict[str, str]) -> None:
    """In `directory`: ca.pem/.key, server.pem/.key for 127.0.0.1 signed by the CA, and for each
    `clients` name -> CA name, a client certificate NAME.pem/.key that CA signed (a CA other
    than "ca" is made as well)."""
    for ca in {"ca", *clients.values()}:
        _openssl(directory, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                 f"{ca}.key", "-out", f"{ca}.pem", "-days", "2", "-subj", f"/CN={ca}")  # fmt: skip
    issued = {"server": ("ca", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")}
    issued |= {name: (ca, "extendedKeyUsage=clientAuth\n") for name, ca in clients.items()}
    for name, (ca, extensions) in issued.items():
        _openssl(directory, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", "-subj", f"/CN={name}")  # fmt: skip
        (directory / f"{name}.ext").write_text(extensions)
        _openssl(directory, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey",
                 f"{ca}.key", "-set_serial", str(random.getrandbits(63)), "-days", "2", "-out",
                 f"{name}.pem", "-extfile", f"{name}.ext")  # fmt: skip
