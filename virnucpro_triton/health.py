"""The image's health check (Docker's HEALTHCHECK, compose's): is the server ready, asked of the
front door on 127.0.0.1 as a client would ask, through TLS when the door speaks it (its
VIRNUCPRO_TLS_CERT is set) and with the door's own first token when it has a token file (so the
check passes under --auth-health too). Exit status 0 when ready, else 1 and why on stderr
(`docker inspect` shows it).

    python3 -m virnucpro_triton.health [--path /v2/health/ready] [--port 8000]

Under mutual TLS the check shows the client certificate of VIRNUCPRO_TLS_CLIENT_CERT and
VIRNUCPRO_TLS_CLIENT_KEY, which the container must then be given.
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from virnucpro_triton.credentials import (
    AUTH_HEADER,
    TLS_CERT_ENV,
    TLS_CLIENT_CERT_ENV,
    TLS_CLIENT_KEY_ENV,
    TOKEN_FILE_ENV,
    CredentialsError,
    bearer,
    read_tokens,
)

READY = "/v2/health/ready"
HTTP_PORT = 8000  # the image's HTTP port (docker/Dockerfile EXPOSE)
TIMEOUT = 5.0


def not_ready_because(port: int, path: str, environ: Mapping[str, str]) -> str | None:
    """None when the door answers `path` with 200, else why not, in one line."""
    headers = {}
    context = None
    scheme = "http"
    try:
        if environ.get(TOKEN_FILE_ENV):
            headers[AUTH_HEADER] = bearer(read_tokens(Path(environ[TOKEN_FILE_ENV]))[0])
        if environ.get(TLS_CERT_ENV):
            scheme = "https"
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            # The door's own certificate, named for the address its clients use, not 127.0.0.1.
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            if environ.get(TLS_CLIENT_CERT_ENV):
                context.load_cert_chain(environ[TLS_CLIENT_CERT_ENV], environ[TLS_CLIENT_KEY_ENV])
    except (CredentialsError, OSError, KeyError) as error:  # ssl.SSLError is an OSError
        return f"cannot ask: {error}"
    url = f"{scheme}://127.0.0.1:{port}{path}"
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT, context=context) as answer:
            return None if answer.status == 200 else f"{url}: HTTP {answer.status}"
    except urllib.error.HTTPError as error:
        return f"{url}: HTTP {error.code}"
    except (urllib.error.URLError, OSError) as error:
        return f"{url}: {getattr(error, 'reason', error)}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python3 -m virnucpro_triton.health")
    parser.add_argument("--path", default=READY, help=f"default {READY}")
    parser.add_argument("--port", type=int, default=HTTP_PORT, help=f"default {HTTP_PORT}")
    args = parser.parse_args(argv)
    if why := not_ready_because(args.port, args.path, os.environ):
        print(f"not ready: {why}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
