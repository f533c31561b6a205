"""Access tokens and TLS files: the one home of their names, format and reading, for the front
door (which checks them) and the client (which sends them).

A token file holds one token per line; blank lines and lines starting with `#` are skipped. The
door accepts every token in its file (several, so that one can be rotated in before the old one
is removed); a client sends the first. Tokens are RFC 6750 `b64token`s of at least
`MIN_TOKEN_LENGTH` characters, e.g. `openssl rand -hex 32`. Files are read as files (never a
token on a command line, where `ps` shows it), so a Kubernetes Secret or a SLURM job can mount
them.
"""

from __future__ import annotations

import re
from pathlib import Path

from virnucpro_triton.errors import VirnucproError

# Environment variables naming the files, read by `serve`, the door and the client alike.
TOKEN_FILE_ENV = "VIRNUCPRO_TOKEN_FILE"
# The server's certificate chain and key (PEM), and the CA its clients' certificates must
# chain to (mutual TLS).
TLS_CERT_ENV = "VIRNUCPRO_TLS_CERT"
TLS_KEY_ENV = "VIRNUCPRO_TLS_KEY"
TLS_CLIENT_CA_ENV = "VIRNUCPRO_TLS_CLIENT_CA"
# The client's: the CA bundle it trusts (default: the system's), its own certificate and key.
TLS_CA_ENV = "VIRNUCPRO_TLS_CA"
TLS_CLIENT_CERT_ENV = "VIRNUCPRO_TLS_CLIENT_CERT"
TLS_CLIENT_KEY_ENV = "VIRNUCPRO_TLS_CLIENT_KEY"

# HTTP header and gRPC metadata key (gRPC keys are lower case) and the scheme of its value.
AUTH_HEADER = "authorization"
SCHEME = "Bearer"
MIN_TOKEN_LENGTH = 16
MAX_TOKEN_LENGTH = 4096
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
# Bounds the read of a token file, which may be any path a user names.
MAX_TOKEN_FILE_BYTES = 1 << 20


class CredentialsError(VirnucproError, ValueError):
    """A token or TLS file that cannot be used; the message names the file and line."""


def well_formed(token: str) -> bool:
    return (
        MIN_TOKEN_LENGTH <= len(token) <= MAX_TOKEN_LENGTH
        and _B64TOKEN.fullmatch(token) is not None
    )


def read_tokens(path: Path) -> list[str]:
    """The tokens of a token file, in order; CredentialsError names the file and the line of a
    token that is malformed, or says that the file holds none."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_TOKEN_FILE_BYTES + 1)
    except OSError as e:
        raise CredentialsError(f"token file {path}: {e.strerror or e}") from None
    if len(data) > MAX_TOKEN_FILE_BYTES:
        raise CredentialsError(f"token file {path}: larger than {MAX_TOKEN_FILE_BYTES} bytes")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise CredentialsError(f"token file {path}: not ASCII text") from None
    tokens = []
    for number, line in enumerate(text.splitlines(), 1):
        token = line.strip()
        if not token or token.startswith("#"):
            continue
        if not well_formed(token):
            # The line is not quoted: it may hold a secret.
            raise CredentialsError(
                f"token file {path} line {number}: not a token (letters, digits and -._~+/, "
                f"{MIN_TOKEN_LENGTH} to {MAX_TOKEN_LENGTH} characters; e.g. openssl rand -hex 32)"
            )
        tokens.append(token)
    if not tokens:
        raise CredentialsError(f"token file {path}: holds no token")
    return tokens


def bearer(token: str) -> str:
    """The Authorization value that carries `token`."""
    return f"{SCHEME} {token}"
