"""gRPC to one or more Triton servers: asynchronous requests spread over healthy endpoints.

A request that fails because a server is away (restarting, overloaded, unreachable) is sent
again, to another endpoint when one is up, until a retry window runs out; requests are
idempotent, so this is safe. The failing endpoint is avoided until a readiness probe, repeated
with exponential backoff, finds it ready again. A request a server refuses on its merits (bad
input) fails at once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

T = TypeVar("T")
log = logging.getLogger("virnucpro_triton.client")

RETRY_SECONDS = 120.0  # default retry window of one request, from its first failure
FIRST_DELAY, MAX_DELAY = 0.5, 10.0  # readiness probes of a failed endpoint: doubling backoff
MAX_MESSAGE_MB = 64  # gRPC message limit; a 256-chunk request of 500 bp is ~0.2 MB
PROBE_TIMEOUT = 5.0

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


@dataclass
class EndpointStats:
    url: str
    answered: int = 0  # requests this endpoint answered
    failed: int = 0  # attempts that met this endpoint away or busy
    outages: int = 0  # times it was taken out of rotation


class _Endpoint:
    def __init__(self, url: str, model: str, max_message_bytes: int):
        # gRPC waits up to 2 minutes between reconnection attempts by default; a restarted
        # server must be found as soon as it is back (probes have their own backoff).
        options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ]
        self.client = grpcclient.InferenceServerClient(url, channel_args=options)
        self.model = model
        self.stats = EndpointStats(url)
        self.up = True
        self.in_flight = 0
        self.consecutive_outages = 0

    @property
    def url(self) -> str:
        return self.stats.url

    def not_ready_because(self) -> str | None:
        """None when the server and the model are ready, else why not."""
        try:
            if not self.client.is_server_ready(client_timeout=PROBE_TIMEOUT):
                return f"the server at {self.url} is not ready"
            if not self.client.is_model_ready(self.model, client_timeout=PROBE_TIMEOUT):
                return f"the server at {self.url} has no ready '{self.model}' model"
        except InferenceServerException as error:
            return f"cannot reach a Triton server at {self.url}: {_one_line(error.message())}"
        return None


class Connection:
    """One model on one or more servers; `submit` returns a Future of the named outputs.

    Thread-safe: answers arrive on gRPC threads and probes run on their own threads, so nothing
    ever blocks on another request.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        model: str,
        *,
        timeout: float = 600.0,
        retry_seconds: float = RETRY_SECONDS,
        max_message_mb: int = MAX_MESSAGE_MB,
    ):
        urls = [urls] if isinstance(urls, str) else list(dict.fromkeys(urls))
        if not urls:
            raise ClientError("no server address given")
        self.urls = urls
        self.model = model
        self.timeout = timeout
        self.retry_seconds = retry_seconds
        self._endpoints = [_Endpoint(url, model, max_message_mb << 20) for url in urls]
        self._lock = threading.Lock()  # guards endpoint state, the waiting list and closing
        self._closed = threading.Event()
        self._waiting: list[Callable[[], None]] = []  # sends waiting for an endpoint to be up
        # A server missing at the start is a wrong address more often than a restart: fail
        # fast when none is ready; with several, the others are probed until they come up.
        reasons = {e.url: e.not_ready_because() for e in self._endpoints}
        if all(reasons.values()):
            self.close()
            raise ClientError("; ".join(reasons.values()))
        for endpoint in self._endpoints:
            if reasons[endpoint.url]:
                reason = reasons[endpoint.url]
                log.warning("%s; probing it until it is ready", reason)
                self._take_out(endpoint)

    @property
    def stats(self) -> list[EndpointStats]:
        return [e.stats for e in self._endpoints]

    def _pick(self) -> _Endpoint | None:
        up = [e for e in self._endpoints if e.up]
        return min(up, key=lambda e: (e.in_flight, e.stats.answered)) if up else None

    def _take_out(self, endpoint: _Endpoint) -> None:
        """Stop sending to `endpoint` and probe it, with backoff, until it is ready (lock held
        or not yet shared)."""
        if not endpoint.up:
            return
        endpoint.up = False
        endpoint.stats.outages += 1
        endpoint.consecutive_outages += 1
        delay = min(FIRST_DELAY * 2 ** (endpoint.consecutive_outages - 1), MAX_DELAY)
        threading.Thread(target=self._probe, args=(endpoint, delay), daemon=True).start()

    def _probe(self, endpoint: _Endpoint, delay: float) -> None:
        while not self._closed.wait(delay):
            if endpoint.not_ready_because() is None:
                with self._lock:
                    endpoint.up = True
                    waiting, self._waiting = self._waiting, []
                for send in waiting:
                    send()
                return
            delay = min(delay * 2, MAX_DELAY)

    def submit(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> Future:
        future: Future = Future()
        infer_inputs = []
        for name, array in inputs.items():
            dtype = np_to_triton_dtype(array.dtype)
            infer_input = grpcclient.InferInput(name, list(array.shape), dtype)
            infer_input.set_data_from_numpy(array)
            infer_inputs.append(infer_input)
        requested = [grpcclient.InferRequestedOutput(name) for name in outputs]
        # Attempts of one request run one after another; `settled` is read and set under the
        # lock because the retry deadline may fire while an attempt is answered.
        attempts = 0
        first_failure: float | None = None
        settled = False

        def settle(result=None, error: ClientError | None = None) -> bool:
            nonlocal settled
            with self._lock:
                if settled or not future.set_running_or_notify_cancel():
                    settled = True
                    return False
                settled = True
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)
            return True

        def send() -> None:
            with self._lock:
                if settled or self._closed.is_set() or future.cancelled():
                    return
                endpoint = self._pick()
                if endpoint is None:  # all away: the first endpoint back sends it
                    self._waiting.append(send)
                    return
                endpoint.in_flight += 1
            try:
                endpoint.client.async_infer(
                    self.model,
                    infer_inputs,
                    callback=lambda result, error: done(endpoint, result, error),
                    outputs=requested,
                    client_timeout=self.timeout,
                )
            except Exception as error:  # raised on a probe thread, it would hang the caller
                with self._lock:
                    endpoint.in_flight -= 1
                message = f"cannot send a '{self.model}' request to {endpoint.url}: {error}"
                settle(error=ClientError(_one_line(message)))

        def give_up(message: str) -> None:
            waited = time.monotonic() - first_failure
            servers = "server at " if len(self.urls) == 1 else "servers at "
            settle(
                error=ClientError(
                    f"gave up on the Triton {servers}{', '.join(self.urls)}: a '{self.model}' "
                    f"request kept failing for {waited:.0f} s (attempts: {attempts}, "
                    f"--retry-seconds {self.retry_seconds:g}): {_one_line(message)}"
                )
            )

        def expire() -> None:  # the window is over: a request still waiting for a server fails
            with self._lock:
                waiting = send in self._waiting
                if waiting:
                    self._waiting.remove(send)
            if waiting:
                give_up(last_message)

        def done(endpoint: _Endpoint, result, error) -> None:
            nonlocal attempts, first_failure, last_message
            attempts += 1
            with self._lock:
                endpoint.in_flight -= 1
                if error is None:
                    endpoint.stats.answered += 1
                    endpoint.consecutive_outages = 0
                elif is_transient(error):
                    endpoint.stats.failed += 1
                    self._take_out(endpoint)
            if error is None:
                settle({name: result.as_numpy(name) for name in outputs})
                return
            if not is_transient(error):
                message = f"the server at {endpoint.url} refused a '{self.model}' request: "
                settle(error=ClientError(message + _one_line(error.message())))
                return
            last_message = f"{endpoint.url}: {error.message()}"
            now = time.monotonic()
            if first_failure is None:
                first_failure = now
                if self.retry_seconds > 0:
                    timer = threading.Timer(self.retry_seconds, expire)
                    timer.daemon = True  # a pending deadline must not keep the interpreter alive
                    timer.start()
            if now - first_failure >= self.retry_seconds:
                give_up(last_message)
            else:
                send()

        last_message = ""
        send()
        return future

    def close(self) -> None:
        with self._lock:
            self._closed.set()
            self._waiting.clear()  # their futures are cancelled by the callers that stop waiting
        for endpoint in self._endpoints:
            endpoint.client.close()


async def in_order(
    jobs: Iterable[tuple[T, Callable[[], Future] | None]]
    | AsyncIterable[tuple[T, Callable[[], Future] | None]],
    max_in_flight: int,
) -> AsyncIterator[tuple[T, dict[str, np.ndarray] | None]]:
    """Start each job's request, keep at most `max_in_flight` unanswered, yield in input order.

    A job without a request (None) is yielded in its place with None, so items that need no
    server work (an empty record) keep their position in the output.
    """
    pending: deque[tuple[T, asyncio.Future | None]] = deque()

    async def oldest() -> tuple[T, dict[str, np.ndarray] | None]:
        item, answer = pending.popleft()
        return item, (await answer if answer is not None else None)

    try:
        async for item, start in as_async(jobs):
            while len(pending) >= max_in_flight:
                yield await oldest()
            pending.append((item, asyncio.wrap_future(start()) if start else None))
        while pending:
            yield await oldest()
    finally:
        for _, answer in pending:
            if answer is not None:
                answer.cancel()


async def as_async(items: Iterable[T] | AsyncIterable[T]) -> AsyncIterator[T]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item
