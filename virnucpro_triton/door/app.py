"""The front door: tritonserver behind a proxy that refuses oversize requests at the port.

Triton 2.51 takes requests of any size (HTTP bodies without limit, gRPC messages up to 2 GB),
copies each into its own memory and then into the Python backend's shared-memory region, which
grows to fit and never shrinks; a model refuses the oversize row only after that. So the door
runs tritonserver with its HTTP, gRPC and metrics endpoints on Unix sockets in a directory only
this user can enter, and serves the ports tritonserver was given itself:

- gRPC through grpcio with a receive limit, checked on a message's length prefix before its body
  is read (RESOURCE_EXHAUSTED);
- HTTP and metrics through aiohttp: 413 on a Content-Length past the limit before the body is
  read, or once a chunked or compressed body grows past it (counted after decompression, since
  Triton would decompress it).

It also bounds connections per port, the time a request head, a body or an idle connection
may take, the bytes of requests forwarded at once and the nesting of an HTTP request's JSON
(door/limits.py). With a token file, every request and call must carry one of its access tokens
(door/access.py); with a certificate and key, every port speaks TLS (door/tls.py); options:
door/settings.py.

Everything else passes through unchanged, bytes for bytes: the door parses no request. It wraps
the tritonserver command line, so the image's CMD, Kubernetes' args and KServe's runtime args
(all starting with `tritonserver`) stay Triton's own:

    virnucpro-triton-door [--max-request-bytes N] [LIMIT OPTIONS] tritonserver ARGS...

Signals (SIGINT, SIGTERM, SIGHUP) go to tritonserver, which shuts down gracefully; the door exits
with its exit status once it has, and removes its sockets.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import ctypes
import dataclasses
import logging
import os
import re
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import NoReturn

import grpc
from aiohttp import ClientConnectionError, ClientSession, ClientTimeout, UnixConnector, web

from virnucpro_triton.credentials import AUTH_HEADER, CredentialsError
from virnucpro_triton.door import access as door_access
from virnucpro_triton.door import limits as door_limits
from virnucpro_triton.door import settings as door_settings
from virnucpro_triton.door.access import Guard
from virnucpro_triton.door.limits import (
    BodyTooDeep,
    BodyTooLarge,
    ConnectionGuard,
    GuardedRunner,
    InFlight,
    Limits,
    read_body,
)
from virnucpro_triton.door.sockets import private_directory, socket_path
from virnucpro_triton.errors import VirnucproError
from virnucpro_triton.processes import dies_with
from virnucpro_triton.repository import MAX_REQUEST_BYTES

# tritonserver's endpoints and its defaults for them; metrics listens where HTTP does unless told.
_DEFAULTS = {"grpc": ("0.0.0.0", 8001), "http": ("0.0.0.0", 8000), "metrics": (None, 8002)}
_NAMES = {"grpc": "gRPC", "http": "HTTP", "metrics": "metrics"}
# The door speaks plain gRPC to tritonserver's socket; TLS is the door's own (door/tls.py).
_UNSUPPORTED = ("--grpc-use-ssl", "--grpc-server-cert", "--grpc-server-key", "--grpc-root-cert")
_FALSE = {"false", "0", "no", "off"}
# Hop-by-hop headers (RFC 9110 7.6.1) and those the door's HTTP client sets itself.
_NOT_FORWARDED = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}
# The client's credentials end at the door: tritonserver neither needs nor logs them.
_NOT_FORWARDED.add(AUTH_HEADER)


class DoorError(VirnucproError, RuntimeError):
    """The door cannot start: the message says why in one line."""


@dataclasses.dataclass
class Endpoint:
    name: str  # "grpc", "http" or "metrics"
    address: str
    port: int
    enabled: bool = True

    @property
    def public(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"

    def socket(self, directory: Path) -> Path:
        return socket_path(directory, self.name, self.port)


def _option(arg: str, following: str | None) -> tuple[str, str | None, int]:
    """(option, value, arguments used) of a `--opt=value` or `--opt value` argument."""
    if "=" in arg:
        option, value = arg.split("=", 1)
        return option, value, 1
    return arg, following, 2


def split_command(command: Sequence[str]) -> tuple[list[str], dict[str, Endpoint]]:
    """The tritonserver command less its endpoint options, and the endpoints they asked for."""
    if not command:
        raise DoorError("no tritonserver command given: virnucpro-triton-door tritonserver ARGS...")
    values: dict[str, str] = {}
    rest = [command[0]]
    i = 1
    while i < len(command):
        arg = command[i]
        if arg.startswith(_UNSUPPORTED):
            raise DoorError(f"{arg}: TLS is the front door's: give it --tls-cert and --tls-key")
        name, _, _ = arg.lstrip("-").partition("=")
        endpoint_option = name.split("-", 1)[0] in _DEFAULTS and name.endswith(
            ("-address", "-port")
        )
        if arg.startswith("--") and (endpoint_option or name.startswith("allow-")):
            option, value, used = _option(arg, command[i + 1] if i + 1 < len(command) else None)
            if value is None:
                raise DoorError(f"{option} needs a value")
            if option.startswith("--allow-"):
                rest.append(f"{option}={value}")  # tritonserver then leaves the endpoint out too
            values[option.removeprefix("--")] = value
            i += used
            continue
        rest.append(arg)
        i += 1
    endpoints = {}
    for name, (address, port) in _DEFAULTS.items():
        address = values.get(f"{name}-address", address or values.get("http-address", "0.0.0.0"))
        try:
            number = int(values.get(f"{name}-port", port))
        except ValueError:
            raise DoorError(f"--{name}-port={values[f'{name}-port']}: not a port number") from None
        if not 0 < number < 65536:
            raise DoorError(f"--{name}-port={number}: not a port number (1-65535)")
        enabled = values.get(f"allow-{name}", "true").lower() not in _FALSE
        endpoints[name] = Endpoint(name, address, number, enabled)
    return rest, endpoints


def upstream_command(rest: list[str], endpoints: dict[str, Endpoint], sockets: Path) -> list[str]:
    """The tritonserver command with each enabled endpoint moved onto its Unix socket."""
    command = list(rest)
    for e in endpoints.values():
        if e.enabled:
            command += [f"--{e.name}-address=unix:{sockets / e.name}", f"--{e.name}-port={e.port}"]
    given = {arg.partition("=")[0] for arg in rest}
    return command + [f"{o}={v}" for o, v in door_limits.TRITON_ARGS.items() if o not in given]


# --- gRPC ----------------------------------------------------------------------------------------

# The one streaming method of Triton's GRPCInferenceService; every other method is unary.
_STREAM_METHOD = "/inference.GRPCInferenceService/ModelStreamInfer"


def _metadata(context: grpc.aio.ServicerContext) -> tuple[tuple[str, str | bytes], ...]:
    # gRPC sets user-agent and its own grpc-* keys on the upstream call itself.
    return tuple(
        (k, v)
        for k, v in context.invocation_metadata() or ()
        if k not in ("user-agent", AUTH_HEADER) and not k.startswith("grpc-")
    )


def _public(error: grpc.aio.AioRpcError, sockets: Path) -> str:
    """The upstream call's error details, less the door's private socket path (a failed
    connection's error names it)."""
    details = error.details() or ""
    if str(sockets) not in details:
        return details
    if error.code() == grpc.StatusCode.UNAVAILABLE:
        return "tritonserver is not answering yet"
    return re.sub(rf"(unix:)?{re.escape(str(sockets))}\S*", "tritonserver", details)


class _GrpcForwarder(grpc.GenericRpcHandler):
    """Forwards every method's messages as bytes to tritonserver's gRPC socket."""

    def __init__(self, channel: grpc.aio.Channel, sockets: Path, in_flight: InFlight) -> None:
        self._channel = channel
        self._sockets = sockets
        self._in_flight = in_flight

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = details.method
        if method == _STREAM_METHOD:
            return grpc.stream_stream_rpc_method_handler(self._stream(method))
        return grpc.unary_unary_rpc_method_handler(self._unary(method))

    def _unary(self, method: str) -> Callable:
        call = self._channel.unary_unary(method)

        async def forward(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            if not self._in_flight.admit(len(request)):
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, self._in_flight.busy())
            try:
                return await call(
                    request, metadata=_metadata(context), timeout=context.time_remaining()
                )
            except grpc.aio.AioRpcError as e:
                await context.abort(e.code(), _public(e, self._sockets))
            finally:
                self._in_flight.release(len(request))

        return forward

    def _stream(self, method: str) -> Callable:
        call = self._channel.stream_stream(method)

        async def forward(
            requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[bytes]:
            # A message's bytes count until its answer comes (one per request: no entry is
            # decoupled), or the stream ends.
            sizes: collections.deque[int] = collections.deque()
            refused = ""

            async def admitted() -> AsyncIterator[bytes]:
                nonlocal refused
                async for request in requests:
                    if not self._in_flight.admit(len(request)):
                        refused = self._in_flight.busy()  # the stream ends there
                        return
                    sizes.append(len(request))
                    yield request

            try:
                async for response in call(admitted(), metadata=_metadata(context)):
                    if sizes:
                        self._in_flight.release(sizes.popleft())
                    yield response
            except grpc.aio.AioRpcError as e:
                await context.abort(e.code(), _public(e, self._sockets))
            finally:
                while sizes:
                    self._in_flight.release(sizes.popleft())
            if refused:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refused)

        return forward


async def _grpc_door(
    endpoint: Endpoint,
    upstream: Path,
    limit: int,
    limits: Limits,
    in_flight: InFlight,
    guard: Guard,
) -> grpc.aio.Server:
    channel = grpc.aio.insecure_channel(
        f"unix:{upstream}",
        options=[
            ("grpc.max_send_message_length", -1),
            ("grpc.max_receive_message_length", -1),
            # tritonserver opens its socket only once its models are loaded: calls before then
            # would put the channel in reconnect back-off (up to 2 minutes by default), and
            # gRPC would stay down after HTTP says ready.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 500),
        ],
    )
    server = grpc.aio.server(
        interceptors=[guard.access.interceptor()] if guard.access else None,
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", -1),
            # grpcio's default SO_REUSEPORT would let the door share a port another server holds.
            ("grpc.so_reuseport", 0),
            *limits.grpc_options(),
        ],
    )
    server.add_generic_rpc_handlers((_GrpcForwarder(channel, upstream.parent, in_flight),))
    try:
        if guard.tls:
            server.add_secure_port(endpoint.public, guard.tls.grpc_credentials())
        else:
            server.add_insecure_port(endpoint.public)
    except RuntimeError:
        raise _in_use(endpoint) from None
    await server.start()
    return server


# --- HTTP and metrics ------------------------------------------------------------------------


def _too_large(size: int | None, limit: int) -> web.Response:
    what = f"of {size} bytes " if size is not None else ""
    return web.json_response(
        {"error": f"request body {what}exceeds the server's limit of {limit} bytes per request"},
        status=413,
    )


def _refusal(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def _http_app(
    upstream: Path,
    limit: int,
    limits: Limits,
    in_flight: InFlight,
    connections: ConnectionGuard,
    middlewares: Sequence = (),
    expect_handler: Callable | None = None,
) -> web.Application:
    async def forward(request: web.Request) -> web.StreamResponse:
        connections.started(request.transport)
        try:
            return await _forward(request)
        finally:
            connections.done(request.transport)

    async def _forward(request: web.Request) -> web.StreamResponse:
        if request.content_length is not None and request.content_length > limit:
            return _too_large(request.content_length, limit)
        # A body of unknown decompressed size may grow to the limit.
        encoded = "Content-Encoding" in request.headers
        reserved = 0
        if request.body_exists:
            reserved = (
                limit if encoded or request.content_length is None else request.content_length
            )
        if not in_flight.admit(reserved):
            return _refusal(503, in_flight.busy(), **{"Retry-After": "1"})
        try:
            try:
                body = await asyncio.wait_for(
                    read_body(request, limit, limits.max_json_depth), limits.body_timeout
                )
            except BodyTooLarge:
                return _too_large(None, limit)
            except BodyTooDeep as refused:
                return _refusal(400, str(refused))
            except asyncio.TimeoutError:
                return _refusal(408, f"request body not received within {limits.body_timeout:g} s")
            except web.RequestPayloadError as e:
                return _refusal(400, f"request body cannot be read: {e}")
            headers = {
                k: v
                for k, v in request.headers.items()
                if k.lower() not in _NOT_FORWARDED and k.lower() != "content-encoding"
            }
            session: ClientSession = request.app["session"]
            try:
                async with session.request(
                    request.method, f"http://triton{request.rel_url}", headers=headers, data=body
                ) as answer:
                    content = await answer.read()
                    kept = {
                        k: v for k, v in answer.headers.items() if k.lower() not in _NOT_FORWARDED
                    }
                    return web.Response(status=answer.status, headers=kept, body=content)
            except ClientConnectionError:
                return _refusal(503, "tritonserver is not answering yet")
        finally:
            in_flight.release(reserved)

    async def session(app: web.Application) -> AsyncIterator[None]:
        # The answer's body passes as it is (compressed or not): Triton set its headers. No
        # connection is kept alive: on SIGTERM Triton waits (up to its exit timeout) for its open
        # HTTP connections to close, and a Unix socket costs little to open per request.
        connector = UnixConnector(path=str(upstream), limit=0, force_close=True)
        timeout = ClientTimeout(total=None)
        # Headers the client did not send are not added: an Accept-Encoding would have Triton
        # compress answers nobody asked to be compressed.
        async with ClientSession(
            connector=connector,
            timeout=timeout,
            auto_decompress=False,
            skip_auto_headers=("Accept-Encoding", "User-Agent"),
        ) as s:
            app["session"] = s
            yield

    app = web.Application(client_max_size=limit, middlewares=middlewares)
    app.router.add_route("*", "/{path:.*}", forward, expect_handler=expect_handler)
    app.cleanup_ctx.append(session)
    return app


async def _http_door(
    endpoint: Endpoint,
    upstream: Path,
    limit: int,
    limits: Limits,
    in_flight: InFlight,
    guard: Guard,
) -> web.AppRunner:
    connections = ConnectionGuard(limits, _NAMES[endpoint.name])
    checks = guard.access.http_checks(endpoint.name) if guard.access else {}
    runner = GuardedRunner(
        _http_app(upstream, limit, limits, in_flight, connections, **checks),
        connections,
        access_log=None,
        # The idle timeout (aiohttp's keep-alive timer runs from a connection's opening too).
        keepalive_timeout=limits.idle_timeout,
        # A refused request's body is not read on (decompressing it would go on after the
        # answer): its connection is closed instead.
        lingering_time=0,
    )
    await runner.setup()
    tls = guard.tls.context if guard.tls else None
    try:
        await web.TCPSite(runner, endpoint.address, endpoint.port, ssl_context=tls).start()
    except OSError:
        await runner.cleanup()
        raise _in_use(endpoint) from None
    return runner


def _in_use(endpoint: Endpoint) -> DoorError:
    # "already in use" and ":PORT" are what EmbeddedServer looks for in a failed start's log.
    return DoorError(
        f"cannot listen on {endpoint.public} for {_NAMES[endpoint.name]}: address already in use "
        "or not available"
    )


# --- the door --------------------------------------------------------------------------------


_libc = ctypes.CDLL(None, use_errno=True)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def _returns_freed_memory() -> None:
    """Fixed malloc thresholds, so that a refused body's memory goes back to the system. glibc
    otherwise raises its mmap threshold to the largest block freed (up to 32 MiB) and its trim
    threshold to twice that: after one oversize body the door would keep that much freed heap."""
    for option in (_M_MMAP_THRESHOLD, _M_TRIM_THRESHOLD):
        _libc.mallopt(option, door_limits.MALLOC_THRESHOLD)


def _socket_directory(given: Path | None) -> Path:
    if given is None:
        return private_directory()  # 0700: only this user connects
    try:
        st, empty = given.stat(), not any(given.iterdir())
    except OSError as e:
        raise DoorError(f"--socket-dir {given}: {e.strerror or e}") from None
    if st.st_uid != os.getuid() or st.st_mode & 0o077 or not empty:
        raise DoorError(f"--socket-dir {given}: not an empty directory only its owner can enter")
    return given


async def serve(
    command: Sequence[str],
    limit: int = MAX_REQUEST_BYTES,
    limits: Limits | None = None,
    guard: Guard | None = None,
    socket_dir: Path | None = None,
) -> int:
    """Run tritonserver behind the door until it exits; return its exit status."""
    rest, endpoints = split_command(command)
    limits = limits or Limits()
    guard = guard or Guard()
    addresses = [e.address for e in endpoints.values() if e.enabled]
    if problem := guard.settings.exposure_problem(addresses):
        raise DoorError(problem)
    sockets = _socket_directory(socket_dir)
    doors: list[grpc.aio.Server | web.AppRunner] = []
    # Started before the doors open: forking after grpcio has started its threads is unsafe.
    triton = await asyncio.create_subprocess_exec(
        *upstream_command(rest, endpoints, sockets),
        env=door_limits.triton_env(os.environ),
        preexec_fn=dies_with(os.getpid()),
    )
    try:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            # Triton shuts down gracefully on SIGINT and SIGTERM; a hang-up means the same here.
            to_send = signal.SIGTERM if sig == signal.SIGHUP else sig
            loop.add_signal_handler(sig, triton.send_signal, to_send)
        in_flight = InFlight(limits.max_bytes_in_flight, door_limits.MemoryGiveBack())
        for e in endpoints.values():
            if e.enabled:
                open_door = _grpc_door if e.name == "grpc" else _http_door
                doors.append(await open_door(e, e.socket(sockets), limit, limits, in_flight, guard))
        print(
            "front door: "
            + ", ".join(f"{_NAMES[e.name]} {e.public}" for e in endpoints.values() if e.enabled)
            + f"; requests up to {limit} bytes, {limits.max_bytes_in_flight} in flight; "
            f"{limits.max_connections} connections per port; JSON nested up to "
            f"{limits.max_json_depth} levels; timeouts (s): header {limits.header_timeout:g}, "
            f"idle {limits.idle_timeout:g}, body {limits.body_timeout:g}" + guard.description(),
            file=sys.stderr,
            flush=True,
        )
        code = await triton.wait()
    finally:
        if triton.returncode is None:  # the door failed to open: nobody could reach the server
            triton.terminate()
            await triton.wait()
        for door in doors:
            if isinstance(door, web.AppRunner):
                await door.cleanup()
            else:
                await door.stop(grace=None)
        shutil.rmtree(sockets, ignore_errors=True)
    return 128 - code if code < 0 else code


class _OneLine(logging.Formatter):
    """A malformed request (aiohttp) or a failed call (grpcio) is one line of the server's log,
    with the reason: no traceback, which would read like a crash of the server."""

    def format(self, record: logging.LogRecord) -> str:
        text = "front door: " + "; ".join(record.getMessage().splitlines())
        if record.exc_info and record.exc_info[1] is not None:
            reason = " ".join(str(record.exc_info[1]).split())
            text += f": {type(record.exc_info[1]).__name__}: {reason}"
        return text


def _log_in_one_line() -> None:
    # A flood (connections past the cap, failed accepts when descriptors run out) is one line
    # per condition and minute, not a line (or a traceback, asyncio's) per connection. The
    # access checks limit their own lines: each refusal names its peer, each reload its file.
    flooding = logging.StreamHandler(sys.stderr)
    flooding.addFilter(door_limits.RateLimited())
    own = logging.StreamHandler(sys.stderr)
    for handler, names in (
        (flooding, ("aiohttp", "grpc", "asyncio")),
        (own, (door_access.__name__,)),
    ):
        handler.setFormatter(_OneLine())
        for name in names:
            logger = logging.getLogger(name)
            logger.addHandler(handler)
            logger.propagate = False


def _positive(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"needs a positive whole number, not {text!r}")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"needs a positive number of seconds, not {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise DoorError(message)


def door_parser() -> argparse.ArgumentParser:
    """The door's own options, which come before the tritonserver command it wraps."""
    parser = _Parser(
        prog="virnucpro-triton-door",
        usage="virnucpro-triton-door [DOOR OPTIONS] tritonserver ARGS...",
        allow_abbrev=False,
    )
    parser.add_argument(
        "--max-request-bytes",
        type=_positive,
        default=MAX_REQUEST_BYTES,
        help="largest request body or gRPC message, in bytes",
    )
    # Limits on connections, time and memory: door_limits.Limits holds their defaults.
    for field in dataclasses.fields(Limits):
        parser.add_argument(
            f"--{field.name.replace('_', '-')}",
            type=_positive if field.type == "int" else _seconds,
            default=field.default,
            help=door_limits.HELP[field.name],
        )
    door_settings.add_arguments(parser)
    parser.add_argument(
        "--socket-dir",
        type=Path,
        help="empty directory, only its owner can enter, for tritonserver's Unix sockets "
        "(default: a new temporary one); removed at exit",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="tritonserver ARGS...")
    return parser


def limits_of(options: argparse.Namespace) -> Limits:
    """The limits the door's parsed options set."""
    if options.max_bytes_in_flight < options.max_request_bytes:
        raise DoorError(
            f"--max-bytes-in-flight={options.max_bytes_in_flight} is below "
            f"--max-request-bytes={options.max_request_bytes}: the largest request could never "
            "pass"
        )
    return Limits(
        **{field.name: getattr(options, field.name) for field in dataclasses.fields(Limits)}
    )


def main(argv: Sequence[str] | None = None) -> None:
    _log_in_one_line()
    _returns_freed_memory()
    try:
        options = door_parser().parse_args(sys.argv[1:] if argv is None else argv)
        args = options.command
        # Before exec, so that a missing binary is one line, not a traceback.
        if args and shutil.which(args[0]) is None:
            raise DoorError(f"{args[0]}: no such program")
        guard = Guard.of(door_settings.AccessSettings.of(vars(options)))
        limits = limits_of(options)
        code = asyncio.run(
            serve(args, options.max_request_bytes, limits, guard, options.socket_dir)
        )
        sys.exit(code)
    except (DoorError, CredentialsError) as e:
        print(f"error: virnucpro-triton-door: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
