"""How a client gets through a server's front door: its access token and TLS, as the options of
`predict` and `embed` and the library API give them (credentials.py holds the contract).

`Access` names the files; `Access.load()` reads them once, checked (each problem one line naming
the file), into the gRPC credentials of every channel and the `authorization` metadata of every
call. The token leaves this module only as that metadata: it is never logged, printed or
written to run.json.
"""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
import tritonclient.grpc as grpcclient
from tritonclient._plugin import InferenceServerClientPlugin
from tritonclient.utils import InferenceServerException

from virnucpro_triton.client import addresses
from virnucpro_triton.credentials import (
    AUTH_HEADER,
    TLS_CA_ENV,
    TLS_CLIENT_CERT_ENV,
    TLS_CLIENT_KEY_ENV,
    TOKEN_FILE_ENV,
    CredentialsError,
    bearer,
    read_tokens,
)

# A TCP connection and TLS handshake of the check that tells why a server closed the channel.
CHECK_TIMEOUT = 5.0
# HTTP/2's client preface: a server that took the handshake answers it with its settings.
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@dataclass(frozen=True)
class Access:
    """The token file and TLS files of a client; none: plain text, no token. A CA bundle or a
    client certificate implies TLS; TLS without a CA bundle trusts the system's CAs."""

    token_file: Path | None = None
    tls: bool = False
    ca: Path | None = None  # the CA bundle the server's certificate must chain to
    client_cert: Path | None = None  # mutual TLS: this client's certificate chain and key
    client_key: Path | None = None

    def __post_init__(self) -> None:
        if (self.client_cert is None) != (self.client_key is None):
            raise CredentialsError(
                "mutual TLS needs both a client certificate and its key "
                "(--tls-client-cert and --tls-client-key)"
            )
        if self.ca or self.client_cert:
            object.__setattr__(self, "tls", True)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> Access:
        """The files the environment names (credentials.py's variables), as the CLI's
        defaults are."""

        def path(name: str) -> Path | None:
            return Path(environ[name]) if environ.get(name) else None

        return cls(
            token_file=path(TOKEN_FILE_ENV),
            ca=path(TLS_CA_ENV),
            client_cert=path(TLS_CLIENT_CERT_ENV),
            client_key=path(TLS_CLIENT_KEY_ENV),
        )

    def summary(self) -> dict[str, str | bool]:
        """What run.json records: whether a token and TLS were used, never which."""
        return {
            "auth": "token" if self.token_file else "none",
            "tls": self.tls,
            "tls_client_certificate": self.client_cert is not None,
        }

    def load(self) -> Channels:
        """The files read and checked; CredentialsError names one that cannot be used."""
        return Channels(self)


PLAIN = Access()  # plain text, no token: the default of the library API


def system_ca_bundle() -> Path | None:
    """The system's CA bundle (SSL_CERT_FILE when set), as OpenSSL finds it; None leaves the
    choice to gRPC (its own bundle of public CAs)."""
    cafile = ssl.get_default_verify_paths().cafile
    return Path(cafile) if cafile and os.path.isfile(cafile) else None


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise CredentialsError(f"{what} {path}: {e.strerror or e}") from None


def _tls_credentials(access: Access) -> grpc.ChannelCredentials:
    """gRPC's credentials from PEM files that Python's ssl (OpenSSL) has parsed first: gRPC
    would take any bytes and fail only in each handshake, without naming the file."""
    ca = access.ca or system_ca_bundle()
    check = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    roots = None
    if ca is not None:
        roots = _read(ca, "CA bundle")
        try:
            check.load_verify_locations(cadata=roots.decode("ascii", "replace"))
        except ssl.SSLError:
            raise CredentialsError(f"CA bundle {ca}: no PEM certificate in it") from None
    key = chain = None
    if access.client_cert:
        chain = _read(access.client_cert, "client certificate")
        key = _read(access.client_key, "client key")
        try:
            check.load_cert_chain(access.client_cert, access.client_key)
        except ssl.SSLError as e:
            why = (
                "the key is not that of the certificate"
                if "MISMATCH" in str(e)
                else "not a PEM certificate and its unencrypted PEM key"
            )
            raise CredentialsError(
                f"client certificate {access.client_cert} and key {access.client_key}: {why}"
            ) from None
    return grpc.ssl_channel_credentials(
        root_certificates=roots, private_key=key, certificate_chain=chain
    )


class _Token(InferenceServerClientPlugin):
    """The `authorization` metadata of every call (tritonclient calls its plugin for each): the
    first token of the file, read once. A rotation keeps the old token on the server until
    the runs that use it have ended (the door accepts every token of its file)."""

    def __init__(self, path: Path):
        self._value = bearer(read_tokens(path)[0])

    def __call__(self, request) -> None:
        request.headers[AUTH_HEADER] = self._value


class Channels:
    """gRPC clients to servers, with the access's credentials and token."""

    def __init__(self, access: Access):
        self.access = access
        self._token = _Token(access.token_file) if access.token_file else None
        self._credentials = _tls_credentials(access) if access.tls else None

    def client(
        self, url: str, host: str, channel_args: list[tuple[str, int | str]]
    ) -> grpcclient.InferenceServerClient:
        """A client of the server at `url` (an IP address and port), which `host` (the name it
        was given by) stands for: its certificate must be for `host`."""
        if self._credentials is not None:
            channel_args = [*channel_args, ("grpc.ssl_target_name_override", host)]
        client = grpcclient.InferenceServerClient(
            url, creds=self._credentials, channel_args=channel_args
        )
        if self._token is not None:
            client.register_plugin(self._token)
        return client

    def refusal(self, url: str, error: InferenceServerException) -> str | None:
        """Why the server at `url` will not take this client however often it is asked, in
        one line: it refused the token, or the TLS handshake failed (and the likely cause).
        None for any other failure. Never quotes the token."""
        status, message = error.status(), " ".join((error.message() or "").split())
        if status == "StatusCode.UNAUTHENTICATED":
            if self._token is None:
                return (
                    f"the server at {url} asks for an access token: give --token-file FILE "
                    f"(or set {TOKEN_FILE_ENV}): {message}"
                )
            return (
                f"the server at {url} refused the access token of {self.access.token_file}: "
                f"{message}"
            )
        if status != "StatusCode.UNAVAILABLE":
            return None
        trusted = f"--tls-ca {self.access.ca}" if self.access.ca else "the system's CA bundle"
        if "CERTIFICATE_VERIFY_FAILED" in message:
            return (
                f"the server at {url}: TLS handshake failed: its certificate is not signed by a "
                f"CA of {trusted} (give the CA bundle that signed it with --tls-ca)"
            )
        if "Hostname Verification" in message:
            return (
                f"the server at {url}: TLS handshake failed: its certificate is not for the name "
                "or address it was given by (use one that the certificate names)"
            )
        if "WRONG_VERSION_NUMBER" in message:
            return (
                f"the server at {url}: TLS handshake failed: it does not speak TLS (a plain-text "
                "server? leave out --tls)"
            )
        if "Socket closed" in message:
            return self._closed_why(url)
        if "handshake failed" in message.lower():
            return f"the server at {url}: TLS handshake failed: {message}"
        return None

    def _closed_why(self, url: str) -> str | None:
        """Why a server closed the channel as soon as it was opened, found by a TLS handshake
        of Python's own: a plain-text client meets a TLS server so, and a TLS client a server
        that asks for a client certificate it did not give or does not trust."""
        address = addresses.parse(url)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        # Whether the server speaks TLS and takes this client is asked, not whom to trust:
        # gRPC's own handshake checked the server's certificate.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.set_alpn_protocols(["h2"])
        if self.access.client_cert:
            context.load_cert_chain(self.access.client_cert, self.access.client_key)
        try:
            raw = socket.create_connection((address.host, address.port), CHECK_TIMEOUT)
        except OSError:
            return None
        with raw:
            try:
                tls = context.wrap_socket(raw)
            except OSError:  # ssl.SSLError too: it does not speak TLS either
                return None
            with tls:
                if not self.access.tls:
                    return (
                        f"the server at {url} speaks TLS: give --tls (and --tls-ca with the CA "
                        "bundle that signed its certificate, unless the system's CAs did)"
                    )
                try:
                    tls.sendall(_HTTP2_PREFACE)
                    if tls.recv(1):
                        return None  # it answers: not why the channel closed
                except TimeoutError:
                    return None
                except OSError:  # ssl.SSLError: its alert
                    pass
        if self.access.client_cert:
            return (
                f"the server at {url} refused the client certificate {self.access.client_cert} "
                "after the TLS handshake (is it signed by a CA that the server trusts?)"
            )
        return (
            f"the server at {url} closed the connection after the TLS handshake: it asks for a "
            "client certificate (mutual TLS): give --tls-client-cert and --tls-client-key"
        )
