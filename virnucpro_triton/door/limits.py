"""The front door's limits on connections, time and memory: their defaults (their one home: the
door's options default to them, and the image, Kubernetes and KServe run the door without
options) and the parts that enforce them, each small enough to check on its own.

- JSON depth: Triton parses an HTTP request's JSON with a recursive parser, so a body of deeply
  nested brackets (200,000 `[`, 326 bytes gzip-compressed) overflows its stack. `JsonDepth`
  counts the nesting as the decompressed body streams through the door, in constant memory.
- Bytes in flight: the size limit is per request; `InFlight` bounds their sum, which tritonserver
  and its Python backend's shared-memory regions (they grow to fit and never shrink) hold at once.
- tritonserver's memory once idle: its gRPC side keeps each answered call's state, the request
  message's buffers included, in a pool for reuse, and glibc keeps large freed blocks in its heap
  once its dynamic thresholds have risen. The door runs tritonserver with an empty pool and fixed
  thresholds (`TRITON_ARGS`, `triton_env`). The Python backend's regions are not given back.
- Connections: a cap per port, and timeouts for a request head, an idle connection and a body,
  so that idle or trickling connections cannot hold the door's descriptors.
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import gc
import logging
import re
import time
from collections.abc import Callable, Mapping

import numpy as np
from aiohttp import web

MAX_JSON_DEPTH = 64  # a KServe v2 request nests 4 levels and its tensors' dimensions, if at all
MAX_CONNECTIONS = 256  # per port: at most the entries' queue (256 requests) of clients at once
HEADER_TIMEOUT_S = 10.0  # a request's first byte to its complete head; gRPC: the preface
# A connection without a request; longer than common load balancers' idle timeout (60 s), so
# that they, not the door, close a connection they keep for reuse.
IDLE_TIMEOUT_S = 75.0
BODY_TIMEOUT_S = 60.0  # a whole body: 32 MiB at about 0.5 MB/s
MAX_BYTES_IN_FLIGHT = 64 * 2**20  # two requests of the largest size forwarded at once
GRPC_KEEPALIVE_S = 60.0  # pings on a gRPC connection that is quiet, to find dead peers
GRPC_KEEPALIVE_TIMEOUT_S = 20.0
LOG_EVERY_S = 60.0  # one log line per condition at most this often
MALLOC_THRESHOLD = 128 * 1024  # glibc's own starting value for its mmap and trim thresholds
# tritonserver's options the door adds where its command does not give them.
TRITON_ARGS = {"--grpc-infer-allocation-pool-size": "0"}

_STEP = np.zeros(256, np.int64)  # what a byte outside strings does to the depth
_STEP[list(b"[{")], _STEP[list(b"]}")] = 1, -1
_QUOTE = ord('"')
_ESCAPE = re.compile(rb"\\.", re.DOTALL)  # a backslash and the character it escapes
_NOT_STRUCTURE = bytes(sorted(set(range(256)) - set(b'[]{}"')))


class JsonDepth:
    """The nesting depth of a JSON text fed in pieces: brackets inside strings (escaped quotes
    included) do not count. Each piece costs a few passes in C and numpy, whatever its bytes.
    Not a parser: text that is not JSON is Triton's to refuse, and once the text closes more
    than it opened it is not JSON, and counting stops."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._depth = 0
        self._in_string = False
        self._tail = b""  # a backslash whose escaped character is in the next piece
        self._stopped = False

    def feed(self, piece: bytes) -> bool:
        """Whether the text so far nests deeper than the limit."""
        if self._stopped:
            return False
        text = _ESCAPE.sub(b"", self._tail + piece)
        self._tail = b""
        if text.endswith(b"\\"):  # all other backslashes were paired with what they escape
            self._tail, text = b"\\", text[:-1]
        structure = np.frombuffer(text.translate(None, _NOT_STRUCTURE), np.uint8)
        if not len(structure):
            return False
        quote = structure == _QUOTE
        outside = (np.cumsum(quote) - quote + self._in_string) % 2 == 0
        depth = self._depth + np.cumsum(_STEP[structure] * outside)
        if depth.min() < 0:
            self._stopped = True
            return False
        self._depth = int(depth[-1])
        self._in_string = bool((self._in_string + int(quote.sum())) % 2)
        return int(depth.max()) > self.limit


class BodyTooLarge(Exception):
    """The decompressed body passed the request limit."""


class BodyTooDeep(Exception):
    """The body's JSON nests deeper than the limit; the message names it."""


async def read_body(request: web.Request, limit: int, max_depth: int) -> bytes:
    """The request's body, decompressed, read as it streams, refused once it passes `limit`
    bytes or once its JSON nests deeper than `max_depth` (with the binary tensor extension,
    only its JSON head, the first Inference-Header-Content-Length bytes, is JSON)."""
    head = request.headers.get("Inference-Header-Content-Length", "")
    json_left = int(head) if head.isascii() and head.isdigit() else None
    depth = JsonDepth(max_depth)
    chunks, size = [], 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        json_part = chunk if json_left is None else chunk[:json_left]
        if json_left is not None:
            json_left -= len(json_part)
        if depth.feed(json_part):
            raise BodyTooDeep(f"request JSON nests deeper than the server's limit of {max_depth}")
        chunks.append(chunk)
    return b"".join(chunks)


class InFlight:
    """Bytes of requests the door is forwarding now, against a bound: past it a request is
    refused at once as busy (a client retries, the project's own among them) rather than held,
    since a held gRPC message is already in the door's memory."""

    def __init__(self, limit: int, idle: Callable[[], None]) -> None:
        self.limit = limit
        self.bytes = 0
        self._idle = idle

    def admit(self, size: int) -> bool:
        if self.bytes + size > self.limit:
            return False
        self.bytes += size
        return True

    def release(self, size: int) -> None:
        self.bytes -= size
        if self.bytes == 0:
            self._idle()

    def busy(self) -> str:
        return (
            f"the server is busy: {self.bytes} bytes of requests in flight, against a limit of "
            f"{self.limit}; retry later"
        )


def triton_env(env: Mapping[str, str]) -> dict[str, str]:
    """tritonserver's environment: glibc's malloc thresholds fixed (as the door fixes its own),
    so that freed request buffers go back to the system; values already set are kept."""
    fixed = str(MALLOC_THRESHOLD)
    return {"MALLOC_MMAP_THRESHOLD_": fixed, "MALLOC_TRIM_THRESHOLD_": fixed} | dict(env)


_libc = ctypes.CDLL(None, use_errno=True)


class MemoryGiveBack:
    """Freed memory back to the system once no request is in flight: a refused gRPC message
    stays referenced from its exception's traceback (a cycle only the garbage collector
    breaks, and an idle door allocates too little to run it), and malloc keeps the heap that
    gRPC's small buffers fragment, which its thresholds alone do not give back."""

    def __init__(self, delay: float = 1.0) -> None:
        self._delay = delay
        self._handle: asyncio.TimerHandle | None = None

    def __call__(self) -> None:
        if self._handle is None:
            self._handle = asyncio.get_running_loop().call_later(self._delay, self._give_back)

    def _give_back(self) -> None:
        self._handle = None
        gc.collect()
        _libc.malloc_trim(0)


class RateLimited(logging.Filter):
    """One record per condition (its message template and exception type) per `every`
    seconds; the next one says how many were left out meanwhile."""

    def __init__(self, every: float = LOG_EVERY_S) -> None:
        super().__init__()
        self._every = every
        self._last: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        kind = type(record.exc_info[1]).__name__ if record.exc_info else ""
        key = (str(record.msg), kind)
        now = time.monotonic()
        last, left_out = self._last.get(key, (float("-inf"), 0))
        if now - last < self._every:
            self._last[key] = (last, left_out + 1)
            return False
        self._last[key] = (now, 0)
        if left_out:
            record.msg = f"{record.msg} (and {left_out} more like it in {self._every:.0f} s)"
        return True


# Each limit's door option (--max-json-depth for max_json_depth, ...) and its help.
HELP = {
    "max_bytes_in_flight": "bytes of requests forwarded at once; past it a request is refused "
    "as busy (HTTP 503, gRPC RESOURCE_EXHAUSTED)",
    "max_connections": "connections open at once per port; past it a connection is refused",
    "max_json_depth": "deepest nesting of an HTTP request's JSON (400 past it)",
    "header_timeout": "seconds from a request's first byte to its complete head (gRPC: the "
    "connection preface)",
    "idle_timeout": "seconds a connection may stay without a request before it is closed",
    "body_timeout": "seconds to receive a whole HTTP request body (408 past it)",
}


@dataclasses.dataclass(frozen=True)
class Limits:
    """The door's limits, as its options set them."""

    max_json_depth: int = MAX_JSON_DEPTH
    max_connections: int = MAX_CONNECTIONS
    header_timeout: float = HEADER_TIMEOUT_S
    idle_timeout: float = IDLE_TIMEOUT_S
    body_timeout: float = BODY_TIMEOUT_S
    max_bytes_in_flight: int = MAX_BYTES_IN_FLIGHT

    def grpc_options(self) -> list[tuple[str, int]]:
        """grpcio server options: the connection cap (past it a connection is closed at
        accept), a deadline for the connection preface, idle connections closed (GOAWAY), and
        keepalive pings to find dead peers."""
        return [
            ("grpc.max_allowed_incoming_connections", self.max_connections),
            ("grpc.server_handshake_timeout_ms", int(self.header_timeout * 1000)),
            ("grpc.max_connection_idle_ms", int(self.idle_timeout * 1000)),
            ("grpc.keepalive_time_ms", int(GRPC_KEEPALIVE_S * 1000)),
            ("grpc.keepalive_timeout_ms", int(GRPC_KEEPALIVE_TIMEOUT_S * 1000)),
        ]


class _Refused(asyncio.Protocol):
    """A connection past the port's cap: a 503 and closed, before anything of it is read."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        body = b'{"error":"the server has too many open connections; retry later"}'
        transport.write(  # type: ignore[attr-defined]
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        transport.close()


class _Connection(asyncio.Protocol):
    """An accepted HTTP connection: aiohttp's handler, with the header timeout around it (the
    time from a request's first byte to its complete head; aiohttp's keep-alive timer closes
    a connection that sends nothing)."""

    def __init__(self, guard: ConnectionGuard, handler: asyncio.Protocol) -> None:
        self._guard, self._handler = guard, handler
        self._timer: asyncio.TimerHandle | None = None
        self._in_request = False
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self._guard.open[transport] = self
        self._handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self._in_request and self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._guard.header_timeout, self._expire)
        self._handler.data_received(data)

    def eof_received(self) -> bool | None:
        return self._handler.eof_received()

    def pause_writing(self) -> None:
        self._handler.pause_writing()

    def resume_writing(self) -> None:
        self._handler.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        self._guard.lost(self)
        self._handler.connection_lost(exc)

    def request_started(self) -> None:
        self._cancel()
        self._in_request = True

    def request_done(self) -> None:
        self._in_request = False

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        self._guard.log.warning(
            "closed a connection whose request head was not complete within %g s",
            self._guard.header_timeout,
        )
        if self.transport is not None:
            self.transport.close()


class ConnectionGuard:
    """The protocol factory of an HTTP port: aiohttp's, with a cap on the connections open at
    once (past it: 503 and closed) and the header timeout."""

    def __init__(self, limits: Limits, name: str) -> None:
        self.factory: Callable[[], asyncio.Protocol] | None = None  # aiohttp's, once set up
        self._cap = limits.max_connections
        self.header_timeout = limits.header_timeout
        self.open: dict[asyncio.BaseTransport, _Connection] = {}
        self._count = 0  # counted at accept: connection_made comes a loop turn later
        self._name = name
        self.log = logging.getLogger("aiohttp.server")

    def __call__(self) -> asyncio.Protocol:
        if self._count >= self._cap:
            self.log.warning(
                "refused %s connections past the limit of %d open at once", self._name, self._cap
            )
            return _Refused()
        self._count += 1
        assert self.factory is not None
        return _Connection(self, self.factory())

    def lost(self, connection: _Connection) -> None:
        self._count -= 1
        self.open.pop(connection.transport, None)  # type: ignore[arg-type]

    def started(self, transport: asyncio.BaseTransport | None) -> None:
        if (connection := self.open.get(transport)) is not None:  # type: ignore[arg-type]
            connection.request_started()

    def done(self, transport: asyncio.BaseTransport | None) -> None:
        if (connection := self.open.get(transport)) is not None:  # type: ignore[arg-type]
            connection.request_done()


class GuardedRunner(web.AppRunner):
    """An AppRunner whose sites accept connections through the port's ConnectionGuard."""

    def __init__(self, app: web.Application, guard: ConnectionGuard, **kwargs: object) -> None:
        super().__init__(app, **kwargs)  # type: ignore[arg-type]
        self._guard = guard

    @property
    def server(self) -> web.Server | None:  # what TCPSite serves its port with
        real = super().server
        if real is None:
            return None
        self._guard.factory = real
        return self._guard  # type: ignore[return-value]
