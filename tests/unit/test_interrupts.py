"""Stop signals inside the client's process: a run cancelled at an await, or the signal raised
where a deferring block ends."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from virnucpro_triton.interrupt import (
    Interrupted,
    run_interruptible,
    signals_deferred,
    stop_signals_interrupt,
)


def test_a_stop_signal_cancels_a_client_run_at_an_await_never_inside_its_code():
    """A signal that lands in the middle of code (as in grpc's call set-up: the channel then
    never closed and `embed --url` hung on SIGTERM) lets that code finish; the run is
    cancelled at its next await and the signal raised once it has unwound."""
    steps = []

    async def run() -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # delivered here, between two lines of code
        steps.append("the code went on")
        try:
            await asyncio.Event().wait()  # never set: only the signal ends the run
        except asyncio.CancelledError:
            steps.append("cancelled at the await")
            raise

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as stopped, stop_signals_interrupt():
        try:
            run_interruptible(run())
        finally:  # cleanup runs with repeats ignored
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    assert stopped.value.signum == signal.SIGTERM
    assert steps == ["the code went on", "cancelled at the await"]
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_stop_signal_inside_a_deferring_block_is_raised_where_it_ends():
    """Outside an event loop (the embedded server's readiness checks over grpc) a signal that
    arrives inside `signals_deferred` lets the block finish, then stops the command."""
    steps = []
    with pytest.raises(Interrupted) as stopped, stop_signals_interrupt():
        with signals_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            steps.append("the block went on")
        steps.append("never reached")
    assert stopped.value.signum == signal.SIGTERM and steps == ["the block went on"]
