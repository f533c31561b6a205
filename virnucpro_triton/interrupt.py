"""SIGTERM and SIGHUP stop a command the way Ctrl-C does.

SLURM, systemd, Kubernetes and `docker stop` send SIGTERM; a closed terminal sends SIGHUP. Their
default action ends the process at once: no `finally` runs, so an embedded tritonserver and its
stubs would keep serving under PID 1 and hidden `.partial` files would stay. Raised as a
KeyboardInterrupt instead, they take the paths Ctrl-C takes: the server is stopped, partial
outputs are removed, the journal is kept for `--resume`.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


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
        # Cleanup (stopping a server takes seconds) runs to its end: repeats are ignored.
        for other in SIGNALS:
            signal.signal(other, signal.SIG_IGN)
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
