"""The servers a command runs against: those given, or an embedded one started for the run, with
what its start is doing shown on stderr."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click

_REDRAW = "\r\033[K"  # back to the start of the line, erased


def _start_feedback() -> Callable[[float, list[str]], None]:
    """What a server start is doing, on stderr: a line redrawn on a terminal, else a line
    whenever the models loading change and every 10 s."""
    said = {"what": "", "at": 0.0}

    def show(seconds: float, loading: list[str]) -> None:
        what = f"loading {', '.join(loading)}" if loading else "starting tritonserver"
        if sys.stderr.isatty():
            click.echo(f"{_REDRAW}{what} ... {seconds:.0f} s", err=True, nl=False)
        elif what != said["what"] or seconds - said["at"] >= 10:
            click.echo(f"virnucpro-triton: {what} ... {seconds:.0f} s", err=True)
            said.update(what=what, at=seconds)

    return show


def start(server) -> float:
    """Start `server` with feedback on stderr; the seconds it took."""
    started = time.monotonic()
    server.start(progress=_start_feedback())
    seconds = time.monotonic() - started
    prefix = _REDRAW if sys.stderr.isatty() else "virnucpro-triton: "
    click.echo(f"{prefix}server ready in {seconds:.1f} s", err=True)
    return seconds


@contextmanager
def given_or_embedded(
    addresses: list[str], repository: Path
) -> Iterator[tuple[list[str], float | None]]:
    """(The given servers, None), or an embedded one on `repository` for the length of the run
    and the seconds it took to start."""
    if addresses:
        yield addresses, None
        return
    from virnucpro_triton.server import EmbeddedServer

    server = EmbeddedServer(repository)
    start_seconds = start(server)
    try:
        yield [server.grpc_url], start_seconds
    finally:
        server.stop()
