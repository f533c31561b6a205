"""Server addresses: HOST:PORT checked as typed, and the servers a name stands for.

A name that resolves to several addresses (a Kubernetes headless Service lists one per ready pod)
stands for that many servers. Kept free of gRPC so that the CLI checks its options at once.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass

from virnucpro_triton.errors import VirnucproError

# (host, port) -> the IP addresses it stands for, in the resolver's order
Resolver = Callable[[str, int], list[str]]


class AddressError(VirnucproError, ValueError):
    """An address that is not HOST:PORT; the message names it."""


@dataclass(frozen=True)
class Address:
    host: str  # a name or an IP address, without brackets
    port: int

    def __str__(self) -> str:
        return join(self.host, self.port)


def join(host: str, port: int) -> str:
    """HOST:PORT as gRPC takes it: an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse(text: str) -> Address:
    """`text` as HOST:PORT, [IPv6]:PORT; anything else raises AddressError naming it."""

    def bad(why: str) -> AddressError:
        return AddressError(f"server address {text!r}: {why}")

    if "://" in text:
        raise bad("give HOST:PORT, without a scheme (e.g. gpu1:8001)")
    if text.startswith("["):
        host, bracket, port = text[1:].partition("]")
        if not bracket or (port and not port.startswith(":")):
            raise bad("an IPv6 address goes in brackets before the port, e.g. [::1]:8001")
        port = port[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise bad(f"{host!r} in brackets is not an IPv6 address") from None
    else:
        host, colon, port = text.rpartition(":")
        if not colon:
            raise bad("no port: give HOST:PORT, e.g. gpu1:8001")
        if ":" in host:
            raise bad("an IPv6 address goes in brackets before the port, e.g. [::1]:8001")
    if not host:
        raise bad("no host before the port")
    if not port:
        raise bad("no port: give HOST:PORT, e.g. gpu1:8001")
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise bad(f"the port must be a number from 1 to 65535, not {port!r}")
    return Address(host, int(port))


def system_resolver(host: str, port: int) -> list[str]:
    """Every A and AAAA record of `host` (through getaddrinfo: /etc/hosts, DNS, ...)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))
