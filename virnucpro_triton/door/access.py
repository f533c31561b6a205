"""Access tokens at the front door: who may use the server's ports.

With a token file, every HTTP request and every gRPC call must carry `Authorization: Bearer
TOKEN` (credentials.py holds the format), checked before any of its body is read: on HTTP by an
aiohttp middleware, on gRPC by a server interceptor that answers before the request message is
received. Liveness and readiness stay open (probes carry no token) unless `--auth-health`.
A refusal is HTTP 401 with `WWW-Authenticate: Bearer` or gRPC UNAUTHENTICATED, one line of the
server's log naming the peer (never the token), and one more count of
`virnucpro_door_unauthenticated_total`, which the metrics port serves after Triton's own.

The token file is looked at again (at most once a second, on a request) and read again when it
changed, so that a token is rotated without a restart; a file that became unreadable or
malformed leaves the last good tokens in force and is said so in one line.

A server that listens beyond loopback without a token file is refused, unless `--no-auth` says
that anyone who reaches its ports may use it.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import os
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
from aiohttp import HttpVersion11, hdrs, web

from virnucpro_triton.credentials import (
    AUTH_HEADER,
    SCHEME,
    CredentialsError,
    read_tokens,
    well_formed,
)
from virnucpro_triton.door.settings import AccessSettings
from virnucpro_triton.door.tls import Tls

log = logging.getLogger(__name__)

# Liveness and readiness, open to probes unless --auth-health.
_HEALTH_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})
_HEALTH_METHODS = frozenset(
    {
        "/inference.GRPCInferenceService/ServerLive",
        "/inference.GRPCInferenceService/ServerReady",
        "/grpc.health.v1.Health/Check",
    }
)
# How often a request may look at the token file, and how many refusals a minute are logged.
_RECHECK_SECONDS = 1.0
_LOG_WINDOW_SECONDS = 60.0
_LOG_LINES_PER_WINDOW = 20
METRIC = "virnucpro_door_unauthenticated_total"
_CHALLENGE = f'{SCHEME} realm="virnucpro-triton"'


class TokenFile:
    """The tokens of a file, read again when the file changes (its inode, size or time)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:  # before the read: a change in between is seen at the next look
            self._stamp, self._fresh = self._stat()
        except OSError as e:
            raise CredentialsError(f"token file {self.path}: {e.strerror or e}") from None
        self._tokens = [t.encode() for t in read_tokens(self.path)]
        self._checked = time.monotonic()
        self._bad: str | None = None  # why the file was last refused: said once

    def _stat(self) -> tuple[tuple[int, ...], bool]:
        st = os.stat(self.path)
        # A file rewritten within one tick of the file system's clock keeps its time (and maybe
        # its size): one read that soon after the last change is not trusted to be the last.
        fresh = time.time() - st.st_mtime < 2 * _RECHECK_SECONDS
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns), fresh

    def tokens(self) -> list[bytes]:
        now = time.monotonic()
        if now - self._checked >= _RECHECK_SECONDS:
            self._checked = now
            self._reload()
        return self._tokens

    def _reload(self) -> None:
        try:
            stamp, fresh = self._stat()
            if stamp == self._stamp and not self._fresh:
                return
            tokens = [t.encode() for t in read_tokens(self.path)]
        except (OSError, CredentialsError) as e:
            problem = (
                e if isinstance(e, CredentialsError) else f"token file {self.path}: {e.strerror}"
            )
            if str(problem) != self._bad:
                self._bad = str(problem)
                log.warning("%s; the last good tokens stay in force", problem)
            return
        self._bad = None
        if tokens != self._tokens:
            log.warning("token file %s read again: %d token(s)", self.path, len(tokens))
        self._tokens, self._stamp, self._fresh = tokens, stamp, fresh


def refusal(values: list[str], tokens: list[bytes]) -> str | None:
    """Why the Authorization values of a request are refused; None if they carry a token."""
    if not values:
        return "no access token"
    if len(values) > 1:
        return "more than one Authorization"
    scheme, _, token = values[0].strip().partition(" ")
    token = token.strip()
    if scheme.lower() != SCHEME.lower() or not well_formed(token):
        return "a malformed Authorization (not Bearer and a token)"
    presented = token.encode()
    matched = False
    for known in tokens:  # every one, so that the time taken does not tell which was close
        matched |= hmac.compare_digest(presented, known)
    return None if matched else "a wrong access token"


class Refusals:
    """Counts of refusals per port, and their log lines: at most so many a minute, so that a
    flood does not fill the log (the count keeps every one)."""

    def __init__(self) -> None:
        self.counts = {"grpc": 0, "http": 0, "metrics": 0}
        self._window = time.monotonic()
        self._logged = self._unlogged = 0

    def note(self, port: str, peer: str, why: str) -> None:
        self.counts[port] += 1
        now = time.monotonic()
        if now - self._window >= _LOG_WINDOW_SECONDS:
            if self._unlogged:
                log.warning(
                    "%d more refusals for want of a valid access token in the last %.0f s "
                    "(not logged one by one; %s counts them)",
                    self._unlogged,
                    now - self._window,
                    METRIC,
                )
            self._window, self._logged, self._unlogged = now, 0, 0
        if self._logged < _LOG_LINES_PER_WINDOW:
            self._logged += 1
            log.warning("refused %s from %s: %s", _PORT_NAMES[port], peer, why)
        else:
            self._unlogged += 1

    def metrics(self) -> str:
        lines = [
            f"# HELP {METRIC} Requests and calls the front door refused for want of a valid "
            "access token.",
            f"# TYPE {METRIC} counter",
        ]
        lines += [f'{METRIC}{{port="{port}"}} {n}' for port, n in self.counts.items()]
        return "\n".join(lines) + "\n"


_PORT_NAMES = {"grpc": "a gRPC call", "http": "an HTTP request", "metrics": "a metrics request"}


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Access:
    """The door's check of access tokens on each of its ports."""

    def __init__(self, tokens: TokenFile, auth_health: bool) -> None:
        self.tokens = tokens
        self.auth_health = auth_health
        self.refusals = Refusals()

    def _refused(self, request: web.Request, port: str) -> web.Response | None:
        """The 401 answer to a request without a valid token (counted and logged), or None."""
        health = request.method in ("GET", "HEAD") and request.rel_url.raw_path in _HEALTH_PATHS
        if health and not self.auth_health:
            return None
        why = refusal(request.headers.getall(AUTH_HEADER, []), self.tokens.tokens())
        if why is None:
            return None
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.refusals.note(port, _address(peer), why)
        challenge = _CHALLENGE + (', error="invalid_token"' if "wrong" in why else "")
        answer = web.json_response(
            {"error": f"{why}: send Authorization: {SCHEME} TOKEN"},
            status=401,
            headers={"WWW-Authenticate": challenge},
        )
        answer.force_close()  # the body was not read; the connection cannot be reused
        return answer

    def http_checks(self, port: str) -> dict[str, object]:
        """The aiohttp application's `middlewares` and its route's `expect_handler` on the HTTP
        (`port` "http") or metrics ("metrics") port."""
        return {"middlewares": self._middlewares(port), "expect_handler": self._expect(port)}

    def _expect(self, port: str) -> Callable[[web.Request], Awaitable[web.Response | None]]:
        """What answers `Expect: 100-continue` (aiohttp runs it before the middlewares): a
        refusal goes out at once, so the client does not send the body it holds back."""

        async def expect(request: web.Request) -> web.Response | None:
            if (answer := self._refused(request, port)) is not None:
                return answer
            # aiohttp's own answer, as its default handler gives it.
            if request.version != HttpVersion11:
                return None
            if request.headers.get(hdrs.EXPECT, "").lower() != "100-continue":
                raise web.HTTPExpectationFailed(
                    text=f"Unknown Expect: {request.headers[hdrs.EXPECT]}"
                )
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # the answer's head is still to come
            return None

        return expect

    def _middlewares(self, port: str) -> list:

        @web.middleware
        async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
            return self._refused(request, port) or await handler(request)

        @web.middleware
        async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
            answer = await handler(request)
            if (
                request.rel_url.path == "/metrics"
                and isinstance(answer, web.Response)
                and answer.status == 200
                and "Content-Encoding" not in answer.headers
                and isinstance(answer.body, bytes)
            ):
                answer.body = answer.body + self.refusals.metrics().encode()
            return answer

        return [check, count] if port == "metrics" else [check]

    def interceptor(self) -> grpc.aio.ServerInterceptor:
        return _Interceptor(self)


class _Interceptor(grpc.aio.ServerInterceptor):
    def __init__(self, access: Access) -> None:
        self._access = access

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        access = self._access
        if details.method in _HEALTH_METHODS and not access.auth_health:
            return await continuation(details)
        values = [v for k, v in details.invocation_metadata or () if k == AUTH_HEADER]
        why = refusal([v if isinstance(v, str) else "" for v in values], access.tokens.tokens())
        if why is None:
            return await continuation(details)

        async def refuse(requests: object, context: grpc.aio.ServicerContext) -> None:
            access.refusals.note("grpc", _grpc_peer(context.peer()), why)
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"{why}: send {AUTH_HEADER}: {SCHEME} TOKEN as metadata",
            )

        # A streaming request whatever the method: grpcio then reads no request message before
        # the handler runs, and the handler reads none.
        return grpc.stream_stream_rpc_method_handler(refuse)


def _address(peer: object) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = peer[0], peer[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return "an unknown peer"


def _grpc_peer(peer: str) -> str:
    # "ipv4:127.0.0.1:5000", "ipv6:%5B::1%5D:5000"
    peer = urllib.parse.unquote(peer)
    return peer.split(":", 1)[1] if peer.startswith(("ipv4:", "ipv6:")) else peer


@dataclasses.dataclass(frozen=True)
class Guard:
    """What stands at each of the door's ports: the token check (None: open to all) and TLS
    (None: plain text), built from the settings with their files read and checked."""

    settings: AccessSettings = AccessSettings()
    access: Access | None = None
    tls: Tls | None = None

    @classmethod
    def of(cls, settings: AccessSettings) -> Guard:
        """CredentialsError names the option or file that cannot be used, in one line."""
        if problem := settings.problem():
            raise CredentialsError(problem)
        access = tls = None
        if settings.token_file:
            access = Access(TokenFile(settings.token_file), settings.auth_health)
        if settings.tls_cert and settings.tls_key:
            tls = Tls.load(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
        return cls(settings, access, tls)

    def description(self) -> str:
        """For the door's start line."""
        text = "; access tokens required" if self.access else "; no access tokens"
        if self.tls:
            text += "; TLS with client certificates" if self.tls.client_ca else "; TLS"
        return text
