"""TLS at the front door: the same certificate and key on its HTTP, gRPC and metrics ports, and
with a client CA, mutual TLS (a client without a certificate that CA signed is refused in the
handshake). The files are read once, at start, and checked there: a missing, unreadable or
malformed file, or a key that is not the certificate's, is one line before anything listens.
tritonserver itself stays on the door's private Unix sockets, in plain text.
"""

from __future__ import annotations

import dataclasses
import ssl
from pathlib import Path

import grpc

from virnucpro_triton.credentials import CredentialsError

# Bounds the read of a file a user names; PEM chains are a few kilobytes.
_MAX_PEM_BYTES = 1 << 20


def _read(path: Path, what: str) -> bytes:
    try:
        with Path(path).open("rb") as handle:
            data = handle.read(_MAX_PEM_BYTES + 1)
    except OSError as e:
        raise CredentialsError(f"TLS {what} {path}: {e.strerror or e}") from None
    if len(data) > _MAX_PEM_BYTES or b"-----BEGIN " not in data:
        raise CredentialsError(f"TLS {what} {path}: not a PEM file")
    return data


@dataclasses.dataclass(frozen=True)
class Tls:
    cert: bytes
    key: bytes = dataclasses.field(repr=False)
    client_ca: bytes | None
    context: ssl.SSLContext

    @classmethod
    def load(cls, cert: Path, key: Path, client_ca: Path | None = None) -> Tls:
        """The files read and checked; CredentialsError names the file and what is wrong."""
        cert_pem, key_pem = _read(cert, "certificate"), _read(key, "key")
        if b"ENCRYPTED" in key_pem:  # the door starts unattended: nobody to type a passphrase
            raise CredentialsError(f"TLS key {key}: encrypted; give the key without a passphrase")
        ca_pem = _read(client_ca, "client CA") if client_ca else None
        # Not create_default_context: it would trust the system's CAs for client certificates.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(cert, key)
        except ssl.SSLError as e:
            raise CredentialsError(
                f"TLS certificate {cert} and key {key}: {_reason(e)} (a key that is not the "
                "certificate's, or a file that is not PEM)"
            ) from None
        if ca_pem is not None:
            try:
                context.load_verify_locations(cadata=ca_pem.decode("ascii"))
            except (ssl.SSLError, UnicodeDecodeError) as e:
                raise CredentialsError(f"TLS client CA {client_ca}: {_reason(e)}") from None
            context.verify_mode = ssl.CERT_REQUIRED
        return cls(cert_pem, key_pem, ca_pem, context)

    def grpc_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)],
            root_certificates=self.client_ca,
            require_client_auth=self.client_ca is not None,
        )


def _reason(error: Exception) -> str:
    return getattr(error, "reason", None) or str(error)
