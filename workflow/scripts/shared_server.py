"""One embedded server for a whole workflow run: `virnucpro-triton serve` started before the
first job, waited for until ready, stopped when the run ends."""

from __future__ import annotations

import ctypes
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

# How jobs learn the server's address: they run in processes that snakemake spawns, which
# inherit its environment but not its Python state.
URL_VARIABLE = "VIRNUCPRO_TRITON_WORKFLOW_URL"
_PR_SET_PDEATHSIG = 1


class ServerStartError(Exception):
    """The shared server did not come up; the message says why and where its log is."""


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:  # all held open while choosing, so the n ports differ
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _die_with_parent() -> None:
    """In the child: SIGTERM when snakemake dies, even by SIGKILL (Linux), so no server outlives
    the run; `serve` stops its tritonserver on SIGTERM."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: onsuccess/onerror/atexit still stop it
        pass


def _last_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "(its log is empty)"


class SharedServer:
    def __init__(self, command: str, repository: str, log: Path, token_file: str | None = None):
        """`token_file`: the access tokens it asks for (its path goes on the command line)."""
        self.command = command
        self.repository = repository
        self.log = log
        self.token_file = token_file
        self.process: subprocess.Popen | None = None
        self.grpc_url = ""

    def start(self, timeout: float) -> str:
        """Start `serve` on free loopback ports; its gRPC HOST:PORT once every model is ready."""
        grpc, http, metrics = _free_ports(3)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [
                    self.command,
                    "serve",
                    "--repository",
                    self.repository,
                    "--grpc-port",
                    str(grpc),
                    "--http-port",
                    str(http),
                    "--metrics-port",
                    str(metrics),
                    *(["--token-file", self.token_file] if self.token_file else []),
                ],  # fmt: skip
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,  # one prctl call, nothing that could deadlock
            )
        ready = f"http://127.0.0.1:{http}/v2/health/ready"
        deadline = time.monotonic() + timeout
        while not self._ready(ready):
            code = self.process.poll()
            if code is not None:
                raise ServerStartError(
                    f"the shared server exited with status {code} while starting: "
                    f"{_last_line(self.log)} (log: {self.log})"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise ServerStartError(
                    f"the shared server was not ready after {timeout:g} s "
                    f"(config server_start_seconds); log: {self.log}"
                )
            time.sleep(0.5)
        self.grpc_url = f"127.0.0.1:{grpc}"
        return self.grpc_url

    @staticmethod
    def _ready(url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                return answer.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        """SIGTERM, as systemd would: `serve` stops tritonserver and its stubs, then exits."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
