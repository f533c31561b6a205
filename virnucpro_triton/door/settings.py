"""The access and TLS settings of `serve` and the front door: the one home of their options
(names, environment variables, help), of the rules on which go together and of where a server
may listen without access tokens. Light to import: the CLI declares its options from here.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from virnucpro_triton.credentials import (
    TLS_CERT_ENV,
    TLS_CLIENT_CA_ENV,
    TLS_KEY_ENV,
    TOKEN_FILE_ENV,
)

# The door's and `serve`'s options for access and TLS: option -> (environment variable, help).
FILE_OPTIONS = {
    "--token-file": (
        TOKEN_FILE_ENV,
        "File of access tokens, one per line; every request must carry one "
        "(Authorization: Bearer TOKEN). Read again when it changes.",
    ),
    "--tls-cert": (TLS_CERT_ENV, "Certificate chain (PEM) of TLS on every port."),
    "--tls-key": (TLS_KEY_ENV, "Private key (PEM) of --tls-cert."),
    "--tls-client-ca": (
        TLS_CLIENT_CA_ENV,
        "CA certificates (PEM): mutual TLS, clients must show a certificate they signed.",
    ),
}
FLAG_OPTIONS = {
    "--no-auth": "Serve without access tokens, also beyond loopback.",
    "--auth-health": "Require the token on liveness and readiness too (default: open for probes).",
}


@dataclasses.dataclass(frozen=True)
class AccessSettings:
    """What `serve` and the door were told about access and TLS (files, never their contents)."""

    token_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    no_auth: bool = False
    auth_health: bool = False

    @classmethod
    def field(cls, option: str) -> str:
        return option.removeprefix("--").replace("-", "_")

    @classmethod
    def of(cls, values: Mapping[str, object]) -> AccessSettings:
        """The settings among parsed options (argparse's `vars()`, click's keywords)."""
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls)})

    def problem(self) -> str | None:
        """Options that do not go together, in one line; None if they do."""
        if self.no_auth and self.token_file:
            return f"--no-auth and a token file ({self.token_file}) exclude each other"
        if self.auth_health and not self.token_file:
            return "--auth-health needs --token-file"
        if bool(self.tls_cert) != bool(self.tls_key):
            return "--tls-cert and --tls-key go together"
        if self.tls_client_ca and not self.tls_cert:
            return "--tls-client-ca needs --tls-cert and --tls-key"
        return None

    def exposure_problem(self, addresses: Iterable[str]) -> str | None:
        """Why listening on `addresses` is refused, in one line; None if it is not."""
        if self.token_file or self.no_auth:
            return None
        for address in addresses:
            if not is_loopback(address):
                return (
                    f"listening on {address} (beyond loopback) without access "
                    f"tokens: give --token-file FILE (or {TOKEN_FILE_ENV}), or --no-auth to "
                    "let anyone who reaches the ports use the server"
                )
        return None

    def door_args(self) -> list[str]:
        """These settings as the door's options."""
        args = [
            f"{option}={value}"
            for option in FILE_OPTIONS
            if (value := getattr(self, self.field(option)))
        ]
        return args + [option for option in FLAG_OPTIONS if getattr(self, self.field(option))]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The access and TLS options on the door's parser; files default to their variables."""
    for option, (variable, help_text) in FILE_OPTIONS.items():
        parser.add_argument(
            option,
            type=Path,
            default=os.environ.get(variable) or None,
            metavar="FILE",
            help=f"{help_text} [env: {variable}]",
        )
    for option, help_text in FLAG_OPTIONS.items():
        parser.add_argument(option, action="store_true", help=help_text)


def is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False
