"""Helpers for tests that watch real servers: request counts, polling, and a classifier that
holds its requests, so that a fault is injected while the server has a request of the run."""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from virnucpro_triton.repository import MODEL_PY, PIPELINE
from virnucpro_triton.server import EmbeddedServer


def served(server: EmbeddedServer) -> int:
    """Pipeline requests this server process answered successfully."""
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        stats = client.get_inference_statistics(PIPELINE, as_json=True)
    return int(stats["model_stats"][0]["inference_stats"]["success"].get("count", 0))


def ensure_running(server: EmbeddedServer) -> None:
    """Start `server` unless it is up: a module's tests may leave it stopped or running."""
    try:
        served(server)
    except InferenceServerException:
        server.start()


def wait_for(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


# Triton's log line once it got SIGINT: from then on it refuses new requests.
STOPPING = "Waiting for in-flight requests to complete."
# The tritonserver inside docker/Dockerfile's base image (NGC support matrix), the wheel's too.
TRITON_OF_BASE = "2.51.0"

HELD_CLASSIFIER = """
import time
from pathlib import Path

from virnucpro_triton.serving.classifier import ClassifierModel

HOLD, HELD = Path({hold!r}), Path({held!r})


def to_pass():
    try:
        return int(HOLD.read_text())
    except FileNotFoundError:  # released
        return None


class TritonPythonModel(ClassifierModel):
    # The real classifier, but while HOLD exists, the requests after the number it holds wait
    # until it is removed, and HELD says one does. One instance: requests come one at a time.
    def initialize(self, args):
        super().initialize(args)
        classify = self.classify

        def held(features):
            if (passing := to_pass()) is not None and passing > 0:
                HOLD.write_text(str(passing - 1))  # one of those let through
            else:
                while to_pass() == 0:
                    HELD.touch()
                    time.sleep(0.05)
            return classify(features)

        self.classify = held
"""


class Hold:
    """A copy of a repository whose classifier_300 holds a request on the test's word. The
    pipeline waits on it, so a run with a request held cannot end before `release()`."""

    def __init__(self, source: Path, directory: Path) -> None:
        self.repository = directory / "repository"
        shutil.copytree(source, self.repository)
        self._hold, self._held = directory / "hold", directory / "held"
        code = HELD_CLASSIFIER.format(hold=str(self._hold), held=str(self._held))
        (self.repository / "classifier_300" / "1" / MODEL_PY).write_text(code)

    @contextlib.contextmanager
    def holding(self, after: int) -> Iterator[None]:
        """Hold the requests that come after `after` more classifier_300 requests, until
        `release()` or the end of the block (so that a failed test leaves no run hanging)."""
        self._held.unlink(missing_ok=True)
        self._hold.write_text(str(after))
        try:
            yield
        finally:
            self.release()

    def wait_held(self) -> None:
        wait_for(self._held.exists, timeout=300)

    def release(self) -> None:
        self._hold.unlink(missing_ok=True)


class Feeder:
    """A FIFO that a FASTA's records are written into, round after round with ids of their
    own, until `until()` holds after a round: a run reading it goes on until then, on a fast
    machine as on a slow one. `records` counts what was written."""

    def __init__(self, path: Path, fasta: Path, until: Callable[[], bool]) -> None:
        os.mkfifo(path)
        self.path, self.records = path, 0
        self._thread = threading.Thread(target=self._write, args=(fasta, until), daemon=True)
        self._thread.start()

    def _write(self, fasta: Path, until: Callable[[], bool]) -> None:
        records = fasta.read_text().split(">")[1:]  # "id\nsequence\n" each
        with open(self.path, "w") as fifo:  # opens once the run reads
            for round_ in itertools.count():
                for record in records:
                    fifo.write(f">round{round_}_{record}")
                    self.records += 1
                if until():
                    return

    def join(self) -> None:
        self._thread.join(timeout=60)
        assert not self._thread.is_alive(), "the run stopped reading its input"


def processes_mentioning(text: str) -> set[int]:
    """PIDs whose command line contains ``text`` (server and stubs carry the repository path)."""
    pids = set()
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text.encode() in (proc / "cmdline").read_bytes():
                pids.add(int(proc.name))
        except OSError:  # exited while we looked
            pass
    return pids


def listening_addresses(port: int) -> set[str]:
    """Local addresses of the TCP sockets listening on ``port``, read from /proc/net."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            hex_address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A = TCP_LISTEN
                raw = bytes.fromhex(hex_address)  # 32-bit words in host (little-endian) order
                ip = ipaddress.ip_address(
                    b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                )
                # gRPC listens on an IPv6 socket with the IPv4-mapped address ::ffff:127.0.0.1
                found.add(str(getattr(ip, "ipv4_mapped", None) or ip))
    return found


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
