"""Run the tritonserver binary shipped in the ``nvidia-pytriton`` wheel as a child process,
behind the project's front door (door/app.py), which serves its ports and limits requests.

The wheel carries Triton 2.51 (``bin/tritonserver``), the Python backend and one backend stub per
Python version, but not laid out as Triton expects, so we assemble a backend directory and the
environment (library path, PATH) that makes the stubs run this interpreter and its environment.

The stub embeds Python in isolated mode: PYTHONPATH and the user site are ignored, and sys.path is
the stdlib plus the site-packages (with their .pth files) of the ``python3`` found on PATH. Model
code can therefore import exactly the packages installed in this environment, e.g. this project
when installed with ``pip install -e .``.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.metadata
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from virnucpro_triton.door.settings import FILE_OPTIONS, AccessSettings
from virnucpro_triton.door.sockets import private_directory, socket_path
from virnucpro_triton.errors import VirnucproError
from virnucpro_triton.interrupt import signals_deferred
from virnucpro_triton.processes import dies_with, free_ports
from virnucpro_triton.repository import SERVER_FLAGS


class ServerError(VirnucproError, RuntimeError):
    """tritonserver could not be started; the message explains why and quotes the server's log."""


# An error line logged by every start on a machine without a GPU; it never explains a failure.
_NOISE = "CudaDriverHelper has not been initialized"
# Triton's glog-style error lines ("E1123 02:54:30.479 ..."), its final "error: ..." line and the
# load/bind failures that appear in info lines and in the model status table.
_ERROR_LINE = re.compile(r"^(E\d{4} |error: )|failed to load|UNAVAILABLE|already in use")


# The Python backend's shared-memory regions are named <prefix><uuid> in /dev/shm. Each embedded
# server gets a prefix of its own, so a region is traced to the server that made it.
SHM_DIR = Path("/dev/shm")
_SHM_FAMILY = "virnucpro_triton_"
_SHM_PREFIX = re.compile(rf"{_SHM_FAMILY}[0-9a-f]{{16}}_")  # in a name or a command line


def remove_stale_regions() -> list[str]:
    """Remove the shared-memory regions of embedded servers no longer running (killed without a
    clean stop): those whose prefix no process's command line names. Returns their names."""
    running = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            running.update(_SHM_PREFIX.findall(cmdline.read_bytes().decode(errors="replace")))
    removed = []
    for region in SHM_DIR.glob(f"{_SHM_FAMILY}*"):
        prefix = _SHM_PREFIX.match(region.name)
        if prefix and prefix.group() not in running:
            with contextlib.suppress(OSError):  # another user's, or removed meanwhile
                region.unlink()
                removed.append(region.name)
    return removed


def _wheel_dirs() -> tuple[Path, Path]:
    """Return (the wheel's tritonserver dir, its bundled shared libraries dir) without importing
    pytriton, whose import pulls in far more than we need."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError(
            "the nvidia-pytriton package (which ships tritonserver) is not installed: "
            "`pip install 'virnucpro-triton[server]'`, or give --url of a running server"
        )
    package = Path(next(iter(spec.submodule_search_locations)))
    return package / "tritonserver", package.parent / "nvidia_pytriton.libs"


def backend_directory() -> Path:
    """Return a Triton backend directory holding the Python backend plus the stub for this Python.

    Built once per (wheel version, Python version) in the user cache. It is assembled in a
    temporary directory and renamed into place so that concurrent starts never see half a copy.
    """
    dist, _ = _wheel_dirs()
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / py / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServerError(f"nvidia-pytriton ships no Python backend stub for Python {py} ({stub})")
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "virnucpro-triton"
    target = cache / f"backends-pytriton{importlib.metadata.version('nvidia-pytriton')}-py{py}"
    if target.is_dir():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=".build-"))
    try:
        shutil.copytree(
            dist / "backends" / "python",
            tmp / "python",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        # The backend launches the stub from its own directory.
        shutil.copy2(stub, tmp / "python" / "triton_python_backend_stub")
        with contextlib.suppress(OSError):  # another process renamed its copy first: use that one
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _server_env(gpus: str | None) -> dict[str, str]:
    env = os.environ.copy()
    # The door takes its access and TLS files from the server's settings alone: variables meant
    # for this process's client side must not close or encrypt a server started for it.
    for variable, _ in FILE_OPTIONS.values():
        env.pop(variable, None)
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpus
    _, libs = _wheel_dirs()

    def prepend(name: str, *paths: str) -> None:
        env[name] = os.pathsep.join([*paths, *filter(None, [env.get(name)])])

    # The copied stub loses its RPATH to the wheel's bundled libraries, and it must load the
    # libpython of this interpreter, not whichever libpython3.X the system linker finds first
    # (which can be a different patch release than the stdlib it then runs).
    prepend("LD_LIBRARY_PATH", str(sysconfig.get_config_var("LIBDIR")), str(libs))
    # The stub takes its site-packages from the `python3` on PATH.
    prepend("PATH", str(Path(sys.executable).parent))
    return env


def _port_in_use(address: str, port: int) -> bool:
    with socket.socket() as s:
        # Same option the server sets, so sockets lingering in TIME_WAIT do not count as in use.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return True
            raise ServerError(f"cannot bind to {address}:{port}: {e}") from e
    return False


class EmbeddedServer:
    """A tritonserver child process serving ``repository`` (model control mode "none": every model
    in the repository is loaded at start and none can be loaded or unloaded over the API)."""

    def __init__(
        self,
        repository: Path,
        *,
        grpc_port: int | None = None,
        http_port: int | None = None,
        metrics_port: int | None = None,
        address: str = "127.0.0.1",
        log_path: Path | None = None,
        log_verbose: int = 0,
        gpus: str | None = None,
        door_options: Sequence[str] = (),
        access: AccessSettings | None = None,
    ) -> None:
        """`gpus`: the CUDA_VISIBLE_DEVICES of the server (default: this process's);
        `door_options`: the front door's own limits (`virnucpro-triton-door --help`), its
        defaults if none; `access`: its access tokens and TLS (default: none, which the door
        allows on loopback only)."""
        self.repository = Path(repository).absolute()
        self.gpus = gpus
        self.address = address
        self.access = access or AccessSettings()
        free = iter(free_ports(3))
        self.ports = {
            "gRPC": grpc_port or next(free),
            "HTTP": http_port or next(free),
            "metrics": metrics_port or next(free),
        }
        # A log made here is the server's scratch: stop() removes it, unless the server failed
        # (exited by itself, or was not ready), when the error that says so names it.
        self._own_log = log_path is None
        self._failed = False
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
            os.close(fd)
            log_path = Path(name)
        self.log_path = Path(log_path)
        self.log_verbose = log_verbose
        self.door_options = list(door_options)
        # Clients cannot connect to a wildcard address.
        self._host = "127.0.0.1" if address == "0.0.0.0" else address
        self.grpc_url = f"{self._host}:{self.ports['gRPC']}"
        self.http_url = f"{self._host}:{self.ports['HTTP']}"
        self.metrics_url = f"http://{self._host}:{self.ports['metrics']}/metrics"
        self.shm_prefix = f"{_SHM_FAMILY}{os.urandom(8).hex()}_"
        self._proc: subprocess.Popen[bytes] | None = None
        self._sockets: Path | None = None  # tritonserver's, made here and given to the door
        self._log_start = 0  # where this run's output begins in a reused log file

    def _command(self) -> list[str]:
        dist, _ = _wheel_dirs()
        # tritonserver behind the front door, which serves the ports and refuses oversize
        # requests before they reach it (door/app.py).
        return [
            sys.executable,
            "-m",
            "virnucpro_triton.door.app",
            *self.door_options,
            *self.access.door_args(),
            f"--socket-dir={self._sockets}",
            str(dist / "bin" / "tritonserver"),
            f"--model-repository={self.repository}",
            f"--backend-directory={backend_directory()}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            *SERVER_FLAGS,
            # The configs are complete; auto-completing them costs each Python entry a stub
            # process of its own before the instances' (seconds of imports each).
            "--disable-auto-complete-config",
            f"--grpc-address={self.address}",
            f"--grpc-port={self.ports['gRPC']}",
            f"--http-address={self.address}",
            f"--http-port={self.ports['HTTP']}",
            f"--metrics-address={self.address}",
            f"--metrics-port={self.ports['metrics']}",
            f"--log-verbose={self.log_verbose}",
        ]

    def _check_repository(self) -> None:
        if not self.repository.exists():
            raise ServerError(f"model repository {self.repository} does not exist")
        if not self.repository.is_dir():
            raise ServerError(f"model repository {self.repository} is not a directory")
        if not any(p.is_dir() for p in self.repository.iterdir()):
            raise ServerError(
                f"model repository {self.repository} holds no model directories, so the server "
                "would have nothing to serve"
            )

    def _check_ports_free(self) -> None:
        busy = [f"{n} port {p}" for n, p in self.ports.items() if _port_in_use(self.address, p)]
        if busy:
            raise ServerError(
                f"cannot start tritonserver: {', '.join(busy)} on {self.address} already in use by "
                "another process (another server still running?). Stop it or choose other ports."
            )

    def start(
        self,
        timeout: float = 900.0,
        progress: Callable[[float, list[str]], None] | None = None,
    ) -> EmbeddedServer:
        """Start the server and return once it and every model in the repository are ready
        (on a GPU that includes compiling the embedding models: minutes for ESM-2 3B).

        `progress` is called while waiting with the seconds so far and the models loading."""
        if self._proc is not None:
            raise ServerError(f"tritonserver is already running (pid {self._proc.pid})")
        self._check_repository()
        self._check_ports_free()
        remove_stale_regions()
        # Readiness is asked of tritonserver on its socket, past the door, whose clients may
        # need a token and a certificate this process does not hold; the ports are checked open.
        self._sockets = private_directory()
        # Tied to this process only when started from the main thread, which lives as long as
        # the process: a worker thread's exit would take the server with it.
        main_thread = threading.current_thread() is threading.main_thread()
        with self.log_path.open("ab") as log:
            self._log_start = log.tell()
            # A session of its own lets stop() kill the Python backend stubs with the server.
            self._proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_server_env(self.gpus),
                start_new_session=True,
                preexec_fn=dies_with(os.getpid()) if main_thread else None,
            )
        started = time.monotonic()
        deadline = started + timeout
        # gRPC backs off up to 2 minutes between connection attempts to a port nobody listens
        # on yet: capped here, the server is seen within a second of listening.
        backoff = [
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 500),
        ]
        try:
            # A stop signal raised inside grpc's calls can leave its channel unable to close:
            # it is raised between them instead.
            with signals_deferred():
                client = grpcclient.InferenceServerClient(
                    f"unix:{socket_path(self._sockets, 'grpc', self.ports['gRPC'])}",
                    channel_args=backoff,
                )
            try:
                while True:
                    with signals_deferred():
                        if self._ready(client):
                            break
                    if progress is not None:
                        progress(time.monotonic() - started, self._loading())
                    # With model control mode "none" the server exits when a model fails to load.
                    if (code := self._proc.poll()) is not None:
                        raise self._fail(f"tritonserver exited ({code}) before it was ready")
                    if time.monotonic() > deadline:
                        raise self._fail(f"tritonserver was not ready within {timeout:.0f} s")
                    time.sleep(0.2)
            finally:
                with signals_deferred():
                    client.close()
        except BaseException:  # e.g. Ctrl-C while waiting: do not leave the server behind
            self.stop()
            raise
        # The backend makes its regions (requests and answers pass through them) world-readable
        # whatever the umask; the stubs run as this user, so owner-only access is enough.
        for region in self.shm_regions():
            region.chmod(0o600)
        return self

    @property
    def pid(self) -> int | None:
        """The tritonserver's process id (its stubs share its process group), or None."""
        return self._proc.pid if self._proc is not None else None

    def shm_regions(self) -> list[Path]:
        """This server's shared-memory regions in /dev/shm."""
        return sorted(SHM_DIR.glob(f"{self.shm_prefix}*"))

    def _ready(self, client: grpcclient.InferenceServerClient) -> bool:
        try:
            if not (
                client.is_server_live(client_timeout=5) and client.is_server_ready(client_timeout=5)
            ):
                return False
            index = client.get_model_repository_index(client_timeout=5)
            if not all(client.is_model_ready(m.name, client_timeout=5) for m in index.models):
                return False
        except InferenceServerException:  # endpoint not up yet
            return False
        # The door exits if a port cannot be bound.
        for port in self.ports.values():
            try:
                socket.create_connection((self._host, port), timeout=1).close()
            except OSError:
                return False
        return self._proc is not None and self._proc.poll() is None

    def _loading(self) -> list[str]:
        """The models loading now, from the log: Triton answers no request before all are."""
        log = self.log_path.read_bytes()[self._log_start :].decode(errors="replace")
        started = re.findall(r'"loading: ([^:"]+):', log)
        done = set(re.findall(r"(?:successfully loaded|failed to load) '([^']+)'", log))
        return [name for name in dict.fromkeys(started) if name not in done]

    def _fail(self, what: str) -> ServerError:
        """Stop the server and build an error explaining its failure from the log."""
        self._failed = True
        self.stop()
        log = self.log_path.read_bytes()[self._log_start :].decode(errors="replace")
        lines = [ln for ln in log.splitlines() if _ERROR_LINE.search(ln) and _NOISE not in ln]
        failed = sorted(set(re.findall(r"failed to load '([^']+)'", log)))
        in_use = " ".join(ln for ln in lines if "already in use" in ln)
        busy = [f"{n} port {p}" for n, p in self.ports.items() if re.search(rf":{p}\b", in_use)]
        if busy:
            reason = (
                f"{', '.join(busy)} on {self.address} is already in use by another process "
                "(another server still running?). Stop it or choose other ports."
            )
        elif failed:
            reason = (
                f"model(s) {', '.join(map(repr, failed))} in {self.repository} failed to load; "
                "the server's error lines below give the cause."
            )
        else:
            reason = "the server's error lines (or the end of its log) are below."
        if "No module named" in log:
            reason += (
                f" Python models run with the site-packages of {Path(sys.executable).parent}"
                "/python3 and ignore PYTHONPATH: install missing packages there."
            )
        quoted = lines or log.splitlines()[-20:]
        return ServerError(
            f"{what}: {reason} Full log: {self.log_path}\n" + "\n".join(f"  {ln}" for ln in quoted)
        )

    def stop(self, timeout: float = 30.0) -> None:
        """Shut the server down gracefully, killing it and its stubs after ``timeout`` seconds.

        The log this server made itself goes too, unless the server failed."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        self._failed |= proc.poll() is not None  # it exited before it was asked to
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)
        # The process group outlives its leader: this also kills stubs the server left behind.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        # SIGKILL is delivered asynchronously; wait (bounded, in case nothing reaps the orphans)
        # until the group is gone so that no process of the server outlives stop().
        deadline = time.monotonic() + 5
        with contextlib.suppress(ProcessLookupError):
            while time.monotonic() < deadline:
                os.killpg(proc.pid, 0)
                time.sleep(0.05)
        # A server killed before its own cleanup leaves its regions behind, the door its sockets.
        for region in self.shm_regions():
            region.unlink(missing_ok=True)
        if self._sockets is not None:
            shutil.rmtree(self._sockets, ignore_errors=True)
        if self._own_log and not self._failed:
            self.log_path.unlink(missing_ok=True)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait(self) -> int:
        """Block until the server exits and return its exit code; Ctrl-C (or another signal
        raising KeyboardInterrupt, see interrupt.py) stops it gracefully and is raised again."""
        proc = self._proc
        if proc is None:
            raise ServerError("tritonserver is not running")
        try:
            return proc.wait()
        except KeyboardInterrupt:
            self.stop()
            raise

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
