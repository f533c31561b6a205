"""gRPC to one or more Triton servers: asynchronous requests spread over healthy endpoints.

Every address a server name resolves to is a server of its own (a Kubernetes headless Service
lists one per ready pod), and names are resolved again every `resolve_seconds`: a replica that
appears joins the rotation once a readiness probe finds it ready, one that vanishes gets no new
requests (those in flight finish or are retried elsewhere). One gRPC channel per address is the
point: gRPC keeps one HTTP/2 connection per channel, so a channel to a name would send every
request of a run to the one address it connected to. An address file (`@FILE`, written by a
server job) is read again on the same schedule, and at once when a server fails: a server job
that restarted on another node is found.

A request that fails because a server is away (restarting, overloaded, unreachable) is sent
again, to another endpoint when one is up, until a retry window runs out; requests are
idempotent, and each request's answer is taken once, so this is safe. The failing endpoint is
avoided until a readiness probe, repeated with exponential backoff, finds it ready again. A
request a server refuses on its merits (bad input) fails at once, and so does a client whose
token or TLS it refuses (AccessRefused, client/access.py says why in one line). At the start,
the connection waits up to the same window for a first server to be ready (one that is still
starting).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
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

from virnucpro_triton.client import addresses
from virnucpro_triton.client.access import PLAIN, Access, Channels
from virnucpro_triton.client.addresses import Resolver, system_resolver
from virnucpro_triton.errors import ClientError

T = TypeVar("T")
log = logging.getLogger("virnucpro_triton.client")

RETRY_SECONDS = 120.0  # default retry window of one request, from its first failure
RESOLVE_SECONDS = 30.0  # server names are resolved again this often
FIRST_DELAY, MAX_DELAY = 0.5, 10.0  # readiness probes of a failed endpoint: doubling backoff
START_MAX_DELAY = 2.0  # probes while waiting for a first server: a start is found within 2 s
MAX_MESSAGE_MB = 64  # gRPC message limit; a 256-chunk request of 500 bp is ~0.2 MB
PROBE_TIMEOUT = 5.0
IN_FLIGHT_PER_SERVER = 4  # requests awaiting an answer per server, by default

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


class AccessRefused(ClientError):
    """The server refuses this client's token, or their TLS handshake fails: asking again does
    not help."""


@dataclass
class EndpointStats:
    url: str  # the server's IP address and port
    answered: int = 0  # requests this endpoint answered
    failed: int = 0  # attempts that met this endpoint away or busy
    outages: int = 0  # times it was taken out of rotation
    name: str = ""  # the address given (--url) that resolved to it
    removed: bool = False  # the name no longer resolves to it: it gets no new requests


class _Endpoint:
    def __init__(
        self,
        url: str,
        name: str,
        host: str,
        model: str,
        max_message_bytes: int,
        channels: Channels,
    ):
        self.host = host  # as given or as its address file says: the name its certificate is for
        self.model = model
        self.max_message_bytes = max_message_bytes
        self.channels = channels
        self.stats = EndpointStats(url, name=name)
        self.client: grpcclient.InferenceServerClient | None = None
        self.up = False  # in rotation: requests are sent to it
        self.probing = False  # a probe thread uses its client
        self.in_flight = 0
        self.consecutive_outages = 0
        self.open()

    @property
    def url(self) -> str:
        return self.stats.url

    def open(self) -> None:
        # gRPC waits up to 2 minutes between reconnection attempts by default; a restarted
        # server must be found as soon as it is back (probes have their own backoff).
        options = [
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ]
        self.client = self.channels.client(self.url, self.host, options)

    def not_ready_because(self) -> str | None:
        """None when the server and the model are ready, else why not; AccessRefused when the
        server refuses this client's token or TLS."""
        try:
            if not self.client.is_server_ready(client_timeout=PROBE_TIMEOUT):
                return f"the server at {self.url} is not ready"
            if not self.client.is_model_ready(self.model, client_timeout=PROBE_TIMEOUT):
                return f"the server at {self.url} has no ready '{self.model}' model"
        except InferenceServerException as error:
            if refused := self.channels.refusal(self.url, error):
                raise AccessRefused(refused) from None
            return f"cannot reach a Triton server at {self.url}: {_one_line(error.message())}"
        return None

    def is_ready(self) -> bool:
        """Whether it can take requests now; refusing this client is not being ready (the
        requests sent to it would be refused, and the run fails saying so)."""
        try:
            return self.not_ready_because() is None
        except AccessRefused:
            return False


class Connection:
    """One model on the servers that one or more addresses stand for; `submit` returns a Future
    of the named outputs.

    `resolve` turns a host name into its addresses (default: getaddrinfo). Thread-safe: answers
    arrive on gRPC threads, probes and the resolver run on their own threads, so nothing ever
    blocks on another request.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        model: str,
        *,
        timeout: float = 600.0,
        retry_seconds: float = RETRY_SECONDS,
        max_message_mb: int = MAX_MESSAGE_MB,
        resolve: Resolver = system_resolver,
        resolve_seconds: float = RESOLVE_SECONDS,
        access: Access = PLAIN,
    ):
        """`access`: the token and TLS files the servers ask for (default: none)."""
        urls = [urls] if isinstance(urls, str) else list(dict.fromkeys(urls))
        if not urls:
            raise ClientError("no server address given")
        try:
            self._sources = [addresses.source(url) for url in urls]
        except addresses.AddressError as error:
            raise ClientError(str(error)) from None
        self.urls = urls
        self.model = model
        self.channels = access.load()
        self.timeout = timeout
        self.retry_seconds = retry_seconds
        self._max_message_bytes = max_message_mb << 20
        self._resolve = resolve
        self._resolve_seconds = resolve_seconds
        self._endpoints: list[_Endpoint] = []  # every server the names stood for, by discovery
        self._unresolved: dict[str, str] = {}  # name -> why it resolves to nothing now
        self._names: list[str] = []  # the addresses given, those of address files as read last
        self._files = any(isinstance(s, addresses.AddressFile) for s in self._sources)
        self._reread = threading.Event()  # a server failed, or the connection closes
        self._lock = threading.Lock()  # guards endpoint state, the waiting list and closing
        self._closed = threading.Event()
        self._waiting: list[_Request] = []  # requests waiting for an endpoint to be up
        self._wake = threading.Condition(self._lock)  # a request waits, or the connection closes
        try:
            self._refresh(probe_new=False)
            self._wait_for_a_server()
        except BaseException:  # e.g. Ctrl-C while waiting
            self.close()
            raise
        threading.Thread(target=self._expire_waiting, daemon=True).start()
        if resolve_seconds > 0 or self._files:
            threading.Thread(target=self._keep_resolving, daemon=True).start()

    @property
    def stats(self) -> list[EndpointStats]:
        with self._lock:
            return [e.stats for e in self._endpoints]

    @property
    def names(self) -> list[str]:
        """The addresses given, an address file's as it said when last read."""
        with self._lock:
            return list(self._names)

    @property
    def servers(self) -> int:
        """Servers the names stand for now (in rotation or probed until they are ready)."""
        with self._lock:
            return sum(not e.stats.removed for e in self._endpoints)

    @property
    def default_in_flight(self) -> int:
        """How many requests to keep in flight when the caller does not say: 4 per server."""
        return IN_FLIGHT_PER_SERVER * max(1, self.servers)

    def _wait_for_a_server(self) -> None:
        """Return once an endpoint is ready; the others are probed until they are. Servers that
        are still starting are waited for up to the retry window, saying so once."""
        deadline = time.monotonic() + self.retry_seconds
        delay, said = FIRST_DELAY, False
        while True:
            endpoints = [e for e in self._endpoints if not e.stats.removed]
            reasons, refused = {}, []
            for endpoint in endpoints:
                try:
                    reasons[endpoint.url] = endpoint.not_ready_because()
                except AccessRefused as refusal:
                    reasons[endpoint.url] = str(refusal)
                    refused.append(refusal)
            if not all(reasons.values()):
                break
            if refused:  # no server takes this client, and waiting will not change that
                raise refused[0]
            why = "; ".join([*self._unresolved.values(), *reasons.values()])
            left = deadline - time.monotonic()
            if left <= 0:
                within = f"no server was ready within {self.retry_seconds:g} s (--retry-seconds)"
                raise ClientError(f"{within}: {why}" if said else why)
            if not said:
                servers = "server at " if len(self.urls) == 1 else "servers at "
                log.warning(
                    "waiting up to %.0f s for the Triton %s%s to be ready (%s)",
                    left,
                    servers,
                    ", ".join(self.urls),
                    why,
                )
                said = True
            self._closed.wait(min(delay, left))
            delay = min(delay * 2, START_MAX_DELAY)
            self._refresh(probe_new=False)
        for reason in self._unresolved.values() if not said else ():
            log.warning("%s; resolving it again every %g s", reason, self._resolve_seconds)
        # Quiet about an address whose name has another that answers: localhost's ::1 beside
        # 127.0.0.1, for a server that listens on one of them.
        answering = {e.stats.name for e in endpoints if not reasons[e.url]}
        with self._lock:
            for endpoint in endpoints:
                endpoint.up = True  # taking out one that is not ready counts as an outage
                if reasons[endpoint.url]:
                    if not (said or endpoint.stats.name in answering):
                        log.warning("%s; probing it until it is ready", reasons[endpoint.url])
                    self._take_out(endpoint)

    def _keep_resolving(self) -> None:
        while True:
            self._reread.wait(self._resolve_seconds or None)
            if self._closed.is_set():
                return
            self._reread.clear()
            self._refresh(probe_new=True)

    def _addresses_now(self) -> list[tuple[str, addresses.Address]]:
        """(name, HOST:PORT) of every address given, an address file's as it says now: its
        servers are named after the file. A file that is missing, empty or unreadable counts as
        a name that does not resolve (its servers stay until it names others)."""
        named = []
        for source in self._sources:
            if isinstance(source, addresses.Address):
                named.append((str(source), source))
                continue
            try:
                found = source.read()
                why = source.why_empty()
            except (addresses.AddressError, OSError) as error:
                found, why = [], str(error)
            if not found:
                self._unresolved[str(source)] = why
            named += [(str(source), address) for address in found]
        return named

    def _refresh(self, *, probe_new: bool) -> None:
        """Resolve every name again: addresses new to the rotation are probed and join it when
        ready, addresses that no name resolves to leave it. A name that does not resolve keeps
        its servers (a DNS hiccup must not empty the rotation: failing servers leave anyway)."""
        found: dict[str, tuple[str, str]] = {}  # url -> (the name it came from, its host)
        self._unresolved = {}
        named = self._addresses_now()
        for label, name in named:
            try:
                hosts = self._resolve(name.host, name.port)
                why = f"{name.host} resolves to no address"
            except (OSError, UnicodeError) as error:  # socket.gaierror; an invalid IDNA name
                hosts, why = [], f"cannot resolve {name.host}: {error}"
            if not hosts:
                self._unresolved.setdefault(label, why)
            for host in hosts:
                found.setdefault(addresses.join(host, name.port), (label, name.host))
        with self._lock:
            if self._closed.is_set():
                return
            self._names = [str(name) for _, name in named]
            kept = {e.stats.name for e in self._endpoints} & set(self._unresolved)
            known = {e.url: e for e in self._endpoints}
            for url, (name, host) in found.items():
                endpoint = known.get(url)
                if endpoint is None:
                    endpoint = _Endpoint(
                        url, name, host, self.model, self._max_message_bytes, self.channels
                    )
                    self._endpoints.append(endpoint)
                    log.info("%s resolves to %s too: probing it", name, url)
                elif endpoint.stats.removed:
                    endpoint.stats.removed = False
                    if endpoint.client is None:
                        endpoint.open()
                else:
                    continue
                if probe_new:
                    self._start_probing(endpoint, 0.0)
            idle = []
            for endpoint in self._endpoints:
                if endpoint.url in found or endpoint.stats.name in kept:
                    continue
                if not endpoint.stats.removed:
                    log.info("%s no longer resolves to %s", endpoint.stats.name, endpoint.url)
                    endpoint.stats.removed, endpoint.up = True, False
                # Closed once nothing uses its channel: no request in flight, no probe.
                if endpoint.client and not (endpoint.in_flight or endpoint.probing):
                    idle.append(endpoint.client)
                    endpoint.client = None
        for client in idle:
            client.close()

    def _pick(self) -> _Endpoint | None:
        up = [e for e in self._endpoints if e.up]
        return min(up, key=lambda e: (e.in_flight, e.stats.answered)) if up else None

    def _take_out(self, endpoint: _Endpoint) -> None:
        """Stop sending to `endpoint` and probe it, with backoff, until it is ready (lock held
        or not yet shared)."""
        if not endpoint.up:
            return
        endpoint.up = False
        if self._files:
            self._reread.set()
        endpoint.stats.outages += 1
        endpoint.consecutive_outages += 1
        delay = min(FIRST_DELAY * 2 ** (endpoint.consecutive_outages - 1), MAX_DELAY)
        self._start_probing(endpoint, delay)

    def _start_probing(self, endpoint: _Endpoint, delay: float) -> None:
        """Probe `endpoint` until it is ready, then bring it into rotation (lock held)."""
        if endpoint.probing:
            return
        endpoint.probing = True
        threading.Thread(target=self._probe, args=(endpoint, delay), daemon=True).start()

    def _probe(self, endpoint: _Endpoint, delay: float) -> None:
        waiting: list[_Request] = []
        while not self._closed.wait(delay):
            ready = not endpoint.stats.removed and endpoint.is_ready()
            with self._lock:
                gone = endpoint.stats.removed or self._closed.is_set()
                if ready or gone:
                    # Under the lock: a refresh that brings the endpoint back either finds
                    # this probe going on or none, and then starts one.
                    endpoint.probing = False
                    if not gone:
                        endpoint.up = True
                        waiting, self._waiting = self._waiting, []
                    break
            delay = min(max(delay, FIRST_DELAY) * 2, MAX_DELAY)
        for request in waiting:
            request.send()

    def submit(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> Future:
        request = _Request(self, inputs, outputs)
        request.send()
        return request.future

    def _assign(self, request: _Request) -> _Endpoint | None:
        """The least busy endpoint in rotation for the request's next attempt, counted in
        flight; None when it is not to be sent: settled, cancelled, closed, or waiting for an
        endpoint to come back (the first one back sends it)."""
        with self._lock:
            if request.settled or self._closed.is_set() or request.future.cancelled():
                return None
            endpoint = self._pick()
            if endpoint is None:
                self._waiting.append(request)
                self._wake.notify()
                return None
            endpoint.in_flight += 1
            return endpoint

    def _unassign(self, endpoint: _Endpoint) -> None:
        """An attempt that could not be sent at all."""
        with self._lock:
            endpoint.in_flight -= 1

    def _count(self, endpoint: _Endpoint, error: InferenceServerException | None) -> None:
        """An answered attempt; a transient failure takes its endpoint out of rotation."""
        with self._lock:
            endpoint.in_flight -= 1
            if error is None:
                endpoint.stats.answered += 1
                endpoint.consecutive_outages = 0
            elif is_transient(error):
                endpoint.stats.failed += 1
                self._take_out(endpoint)

    def _expire_waiting(self) -> None:
        """Fail the requests still waiting for a server when their retry window is over: one
        thread for all of them, asleep until the first deadline."""
        while True:
            with self._lock:
                due = self._take_due()
            if due is None:
                return
            for request in due:
                request.give_up()

    def _take_due(self) -> list[_Request] | None:
        """(Lock held) Wait for waiting requests whose window is over and take them out of the
        waiting list; None once the connection is closed."""
        while not self._closed.is_set():
            now = time.monotonic()
            due = [r for r in self._waiting if r.deadline <= now]
            if due:
                self._waiting = [r for r in self._waiting if r.deadline > now]
                return due
            first = min((r.deadline for r in self._waiting), default=math.inf)
            self._wake.wait(None if first == math.inf else first - now)
        return None

    def close(self) -> None:
        with self._lock:
            self._closed.set()
            self._reread.set()
            self._waiting.clear()  # their futures are cancelled by the callers that stop waiting
            self._wake.notify_all()
            clients = [e.client for e in self._endpoints if e.client]
        for client in clients:
            client.close()


class _Request:
    """One request and its attempts, one after another: each goes to the least busy endpoint in
    rotation. After a transient failure it is sent again, or waits for an endpoint to come
    back, until `retry_seconds` have passed since the first failure; then it fails with the
    last reason."""

    def __init__(self, connection: Connection, inputs: dict[str, np.ndarray], outputs: list[str]):
        self.connection = connection
        self.future: Future = Future()
        self.inputs = []
        for name, array in inputs.items():
            dtype = np_to_triton_dtype(array.dtype)
            infer_input = grpcclient.InferInput(name, list(array.shape), dtype)
            infer_input.set_data_from_numpy(array)
            self.inputs.append(infer_input)
        self.outputs = outputs
        self.requested = [grpcclient.InferRequestedOutput(name) for name in outputs]
        self.attempts = 0
        self.first_failure: float | None = None
        self.deadline = math.inf  # the first failure + the retry window: waiting past it fails
        self.last_message = ""
        # Read and set under the connection's lock: the deadline may pass while an attempt is
        # answered.
        self.settled = False

    def send(self) -> None:
        connection = self.connection
        endpoint = connection._assign(self)
        if endpoint is None:
            return
        try:
            endpoint.client.async_infer(
                connection.model,
                self.inputs,
                callback=functools.partial(self.on_done, endpoint),
                outputs=self.requested,
                client_timeout=connection.timeout,
            )
        except Exception as error:  # raised on a probe thread, it would hang the caller
            connection._unassign(endpoint)
            message = f"cannot send a '{connection.model}' request to {endpoint.url}: {error}"
            self.settle(error=ClientError(_one_line(message)))

    def on_done(self, endpoint: _Endpoint, result, error: InferenceServerException | None) -> None:
        """gRPC's callback (it passes `result=` and `error=` by name)."""
        self.attempts += 1
        self.connection._count(endpoint, error)
        if error is None:
            self.settle({name: result.as_numpy(name) for name in self.outputs})
        elif not is_transient(error):
            if refused := endpoint.channels.refusal(endpoint.url, error):  # UNAUTHENTICATED
                self.settle(error=AccessRefused(refused))
                return
            message = f"the server at {endpoint.url} refused a '{self.connection.model}' request: "
            self.settle(error=ClientError(message + _one_line(error.message())))
        else:
            self.retry(f"{endpoint.url}: {error.message()}")

    def retry(self, message: str) -> None:
        """After a transient failure: send again within the retry window, else give up."""
        self.last_message = message
        now = time.monotonic()
        if self.first_failure is None:
            self.first_failure = now
            self.deadline = now + self.connection.retry_seconds
        if now - self.first_failure >= self.connection.retry_seconds:
            self.give_up()
        else:
            self.send()

    def give_up(self) -> None:
        connection = self.connection
        waited = time.monotonic() - self.first_failure
        servers = "server at " if len(connection.urls) == 1 else "servers at "
        self.settle(
            error=ClientError(
                f"gave up on the Triton {servers}{', '.join(connection.urls)}: a "
                f"'{connection.model}' request kept failing for {waited:.0f} s (attempts: "
                f"{self.attempts}, --retry-seconds {connection.retry_seconds:g}): "
                f"{_one_line(self.last_message)}"
            )
        )

    def settle(self, result=None, error: ClientError | None = None) -> None:
        with self.connection._lock:
            if self.settled:
                return
            self.settled = True
            if not self.future.set_running_or_notify_cancel():
                return
        if error is None:
            self.future.set_result(result)
        else:
            self.future.set_exception(error)


async def in_order(
    jobs: Iterable[tuple[T, Callable[[], Future] | None]]
    | AsyncIterable[tuple[T, Callable[[], Future] | None]],
    max_in_flight: int | Callable[[], int],
) -> AsyncIterator[tuple[T, dict[str, np.ndarray] | None]]:
    """Start each job's request, keep at most `max_in_flight` unanswered, yield in input order.

    `max_in_flight` may be a function, asked before each request: a limit that follows the
    servers as they come and go. A job without a request (None) is yielded in its place with
    None, so items that need no server work (an empty record) keep their position in the output.
    """
    limit = max_in_flight if callable(max_in_flight) else lambda: max_in_flight
    pending: deque[tuple[T, asyncio.Future | None]] = deque()

    async def oldest() -> tuple[T, dict[str, np.ndarray] | None]:
        item, answer = pending.popleft()
        return item, (await answer if answer is not None else None)

    try:
        async for item, start in as_async(jobs):
            while len(pending) >= limit():
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
