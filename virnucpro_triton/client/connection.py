"""gRPC to a Triton server: asynchronous requests, answered in order, a bounded number at once.

A request that fails because the server is away (restarting, overloaded, unreachable) is sent
again with exponential backoff until a retry window runs out; requests are idempotent, so this
is safe. A request the server refuses on its merits (bad input) fails at once.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import TypeVar

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

T = TypeVar("T")

RETRY_SECONDS = 120.0  # default retry window of one request, from its first failure
FIRST_DELAY, MAX_DELAY = 0.5, 10.0  # backoff between attempts: doubles from the first to the max

# Statuses of a server that is away or busy. NOT_FOUND is the model being unloaded by a server
# that shuts down: the connection checked that it was ready when it opened.
_TRANSIENT_STATUSES = frozenset(
    f"StatusCode.{name}"
    for name in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "NOT_FOUND")
)
# The same conditions met inside the server (a Python backend stub that died, the pipeline's
# calls to the other models) arrive as INTERNAL: only their messages tell them apart.
_TRANSIENT_MESSAGES = (
    "stub process is not healthy",
    "exceeds maximum queue size",
    "request for unknown model",
    "has no available versions",
    "not ready",  # "Server not ready", "model ... is not ready"
)


class ClientError(RuntimeError):
    """The server cannot be reached or refused a request; the message is for the user."""


def text_column(strings: list[str]) -> np.ndarray:
    """A [n, 1] BYTES tensor, the shape every served model takes text in."""
    return np.array(strings, dtype=object).reshape(-1, 1)


def is_transient(error: InferenceServerException) -> bool:
    """Whether the request may succeed when sent again, unchanged."""
    if error.status() == "StatusCode.INVALID_ARGUMENT":
        return False
    message = (error.message() or "").lower()
    return error.status() in _TRANSIENT_STATUSES or any(m in message for m in _TRANSIENT_MESSAGES)


def _one_line(message: str | None) -> str:
    return " ".join((message or "no message").split())


def _fail(future: Future, error: ClientError) -> None:
    if future.set_running_or_notify_cancel():  # False: the caller no longer wants the answer
        future.set_exception(error)


class Connection:
    """One model on one server; `submit` returns a Future of the named outputs.

    Thread-safe: answers arrive on gRPC threads and retries are sent from timer threads, so
    neither ever blocks on another request.
    """

    def __init__(
        self, url: str, model: str, timeout: float = 600.0, retry_seconds: float = RETRY_SECONDS
    ):
        self.url = url
        self.model = model
        self.timeout = timeout
        self.retry_seconds = retry_seconds
        # gRPC waits up to 2 minutes between reconnection attempts by default; a restarted
        # server must be found as soon as it is back (retries have their own backoff).
        options = [
            ("grpc.max_send_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
            ("grpc.max_receive_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ]
        self.client = grpcclient.InferenceServerClient(url, channel_args=options)
        self._lock = threading.Lock()  # orders sends against close()
        self._closed = False
        # A server missing at the start is a wrong address more often than a restart: fail fast.
        try:
            ready = self.client.is_server_ready() and self.client.is_model_ready(model)
        except InferenceServerException as error:
            raise ClientError(f"cannot reach a Triton server at {url}: {error.message()}") from None
        if not ready:
            raise ClientError(f"the server at {url} has no ready '{model}' model")

    def submit(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> Future:
        future: Future = Future()
        infer_inputs = []
        for name, array in inputs.items():
            dtype = np_to_triton_dtype(array.dtype)
            infer_input = grpcclient.InferInput(name, list(array.shape), dtype)
            infer_input.set_data_from_numpy(array)
            infer_inputs.append(infer_input)
        requested = [grpcclient.InferRequestedOutput(name) for name in outputs]
        # Attempts of one request run one after another, so this state needs no lock.
        attempts = 0
        first_failure: float | None = None

        def send() -> None:
            with self._lock:
                if self._closed or future.cancelled():
                    return
                try:
                    self.client.async_infer(
                        self.model,
                        infer_inputs,
                        callback=done,
                        outputs=requested,
                        client_timeout=self.timeout,
                    )
                except Exception as error:  # raised on a timer thread, it would hang the caller
                    message = f"cannot send a '{self.model}' request to {self.url}: {error}"
                    _fail(future, ClientError(_one_line(message)))

        def done(result, error) -> None:  # tritonclient calls back with these keyword names
            nonlocal attempts, first_failure
            attempts += 1
            if error is None:
                if future.set_running_or_notify_cancel():
                    future.set_result({name: result.as_numpy(name) for name in outputs})
                return
            now = time.monotonic()
            if first_failure is None:
                first_failure = now
            left = self.retry_seconds - (now - first_failure)
            if not is_transient(error):
                message = f"the server at {self.url} refused a '{self.model}' request: "
                _fail(future, ClientError(message + _one_line(error.message())))
            elif left <= 0:
                _fail(
                    future,
                    ClientError(
                        f"gave up on the Triton server at {self.url}: a '{self.model}' request "
                        f"kept failing for {now - first_failure:.0f} s (attempts: {attempts}, "
                        f"--retry-seconds {self.retry_seconds:g}): {_one_line(error.message())}"
                    ),
                )
            else:
                delay = min(FIRST_DELAY * 2 ** (attempts - 1), MAX_DELAY, left)
                timer = threading.Timer(delay, send)
                timer.daemon = True  # a pending retry must not keep the interpreter alive
                timer.start()

        send()
        return future

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self.client.close()


def in_order(
    jobs: Iterable[tuple[T, Callable[[], Future] | None]], max_in_flight: int
) -> Iterator[tuple[T, dict[str, np.ndarray] | None]]:
    """Start each job's request, keep at most `max_in_flight` unanswered, yield in input order.

    A job without a request (None) is yielded in its place with None, so items that need no
    server work (an empty record) keep their position in the output.
    """
    pending: deque[tuple[T, Future | None]] = deque()
    try:
        for item, start in jobs:
            while len(pending) >= max_in_flight:
                done_item, future = pending.popleft()
                yield done_item, future.result() if future else None
            pending.append((item, start() if start else None))
        while pending:
            done_item, future = pending.popleft()
            yield done_item, future.result() if future else None
    finally:
        for _, future in pending:
            if future:
                future.cancel()
