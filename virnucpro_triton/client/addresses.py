"""Server addresses: HOST:PORT checked as typed, the servers a name stands for, and address
files (@FILE) that a server job writes and its clients read again when it changes.

A name that resolves to several addresses (a Kubernetes headless Service lists one per ready pod)
stands for that many servers. Kept free of gRPC so that the CLI checks its options at once.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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


# `--url @FILE`: the addresses in FILE, read again when it changes. A server job writes its
# address there once ready (slurm/serve.sbatch, `serve --address-file`), so clients find a
# server that restarted elsewhere.
FILE_PREFIX = "@"


class AddressFile:
    """A file of HOST:PORT addresses, one per line (`#` starts a comment), read again whenever
    its inode, size or mtime changed since the last read."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._seen: tuple[int, int, int] | None = None
        self._addresses: list[Address] = []

    def __str__(self) -> str:
        return f"{FILE_PREFIX}{self.path}"

    def read(self) -> list[Address]:
        """Its addresses now; [] while it is missing or empty (a server job not yet ready, or
        restarting). AddressError names the file and line of an address that is not
        HOST:PORT."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._seen, self._addresses = None, []
            return []
        seen = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if seen != self._seen:
            addresses = []
            for number, line in enumerate(self.path.read_text().splitlines(), 1):
                text = line.split("#", 1)[0].strip()
                if text:
                    try:
                        addresses.append(parse(text))
                    except AddressError as error:
                        raise AddressError(f"{self.path} line {number}: {error}") from None
            self._seen, self._addresses = seen, addresses
        return list(self._addresses)

    def why_empty(self) -> str:
        state = "does not exist" if not self.path.exists() else "holds no address"
        return f"the address file {self.path} {state} (yet)"


def source(text: str) -> Address | AddressFile:
    """HOST:PORT as `parse` takes it, or @FILE: the addresses in FILE."""
    if text.startswith(FILE_PREFIX):
        if not text[1:]:
            raise AddressError(f"server address {text!r}: a file name goes after {FILE_PREFIX}")
        return AddressFile(Path(text[1:]))
    return parse(text)


def write_file(path: Path, address: str) -> None:
    """`address` as the whole of the address file `path`, atomically: a reader sees the old
    file or the new one, never a part."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(f"{address}\n")
    os.replace(partial, path)


def remove_file(path: Path, address: str) -> None:
    """Remove the address file `path` if it still names `address`: a server started since
    (another job) has written its own, which stays."""
    path = Path(path)
    with contextlib.suppress(FileNotFoundError):
        if path.read_text().strip() == address:
            path.unlink()
