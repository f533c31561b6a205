"""SIGTERM and SIGHUP stop a command the way Ctrl-C does.

SLURM, systemd, Kubernetes and `docker stop` send SIGTERM; a closed terminal sends SIGHUP. Their
default action ends the process at once: no `finally` runs, so an embedded tritonserver and its
stubs would keep serving under PID 1 and hidden `.partial` files would stay. Raised as a
KeyboardInterrupt instead, they take the paths Ctrl-C takes: the server is stopped, partial
outputs are removed, the journal is kept for `--resume`.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
T = TypeVar("T")


class Interrupted(KeyboardInterrupt):
    """A stop signal arrived; `exit_status` is the shell's convention for it (128 + number)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


@contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """Within the block, SIGINT, SIGTERM and SIGHUP raise Interrupted in the main thread."""

    def interrupt(signum: int, _frame: object) -> None:
        if _deferring:
            _deferred.append(signum)  # raised where the deferring block ends
            return
        _ignore_repeats()
        raise Interrupted(signum)

    # A signal ignored from the start stays ignored (`nohup` ignores SIGHUP).
    previous = {
        signum: signal.signal(signum, interrupt)
        for signum in SIGNALS
        if signal.getsignal(signum) is not signal.SIG_IGN
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


_deferring: list[bool] = []  # one entry per open `signals_deferred` block of the main thread
_deferred: list[int] = []


@contextmanager
def signals_deferred() -> Iterator[None]:
    """A stop signal that arrives inside the block is raised as Interrupted where it ends, not
    in the middle of it: for grpc calls made outside an event loop (see run_interruptible). Only
    the main thread takes signals; elsewhere the block changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _deferring.append(True)
    try:
        yield
    finally:
        _deferring.pop()
        if _deferred and not _deferring:
            signum = _deferred[0]
            _deferred.clear()
            _ignore_repeats()
            raise Interrupted(signum)


def run_interruptible(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run(main), where a stop signal cancels `main` and is raised as Interrupted once
    it has unwound. An exception raised wherever the signal lands (stop_signals_interrupt's way)
    can land inside grpc's call set-up, whose channel then never closes: the command hung on
    SIGTERM. The loop instead takes the signal at a safe point and cancels at an `await`."""
    caught: list[int] = []

    async def run() -> T:
        task, loop = asyncio.current_task(), asyncio.get_running_loop()

        def stop(signum: int) -> None:
            if not caught:
                caught.append(signum)
                task.cancel()

        # A signal ignored from the start stays ignored; the others get their handlers back.
        # Signals reach the main thread only: a run in another thread leaves them alone.
        previous = {s: signal.getsignal(s) for s in SIGNALS}
        in_main = threading.current_thread() is threading.main_thread()
        taken = [s for s, h in previous.items() if in_main and h is not signal.SIG_IGN]
        for signum in taken:
            loop.add_signal_handler(signum, stop, signum)
        try:
            return await main
        finally:
            for signum in taken:
                loop.remove_signal_handler(signum)
                signal.signal(signum, previous[signum])

    try:
        return asyncio.run(run())
    except asyncio.CancelledError:
        if not caught:
            raise
        _ignore_repeats()
        raise Interrupted(caught[0]) from None


def _ignore_repeats() -> None:
    """Cleanup (stopping a server takes seconds) runs to its end: repeats are ignored."""
    for signum in SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
