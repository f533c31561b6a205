"""Child processes and their ports: a child that dies with its parent, and free loopback ports."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
from collections.abc import Callable


def dies_with(parent: int) -> Callable[[], None]:
    """What a child runs before exec (`preexec_fn`): SIGTERM (a clean shutdown) when `parent`
    dies, even of SIGKILL. Linux sends it when the *thread* that forked exits, so the parent
    forks from a thread that lives as long as the child should."""

    # Looked up here, in the parent: the child of a threaded parent should not need the
    # loader's locks.
    prctl, pr_set_pdeathsig = ctypes.CDLL(None, use_errno=True).prctl, 1

    def arm() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM)
        if os.getppid() != parent:  # it died before the request was made
            os._exit(1)

    return arm


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is unused right now."""
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """`n` distinct TCP ports on 127.0.0.1 unused right now."""
    # Hold all sockets open while choosing so that the n ports are distinct.
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
