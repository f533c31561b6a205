"""The door's private directory of tritonserver's Unix sockets: made per door, named for the
door's process, and removed by the next door when the door was killed (SIGKILL gives it no
chance to remove its own)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

PREFIX = "vt-door-"


def _named_by_a_process(directory: Path) -> bool:
    """Whether a running process's command line names `directory` (tritonserver's does)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if str(directory).encode() in cmdline.read_bytes():
                return True
    return False


def remove_stale_directories() -> list[Path]:
    """Remove this user's socket directories of doors no longer running, whose tritonserver
    has gone too. Returns them."""
    removed = []
    for directory in Path(tempfile.gettempdir()).glob(f"{PREFIX}*"):
        pid = directory.name.removeprefix(PREFIX).split("-", 1)[0]
        with contextlib.suppress(OSError):
            if (
                not pid.isdigit()
                or directory.stat().st_uid != os.getuid()
                or Path(f"/proc/{pid}").exists()
                or _named_by_a_process(directory)
            ):
                continue
            shutil.rmtree(directory)
            removed.append(directory)
    return removed


def socket_path(directory: Path, endpoint: str, port: int) -> Path:
    """Where tritonserver listens for `endpoint` ("grpc", "http" or "metrics") in `directory`:
    Triton appends ":PORT" to a gRPC address, also to a Unix one; HTTP's server does not."""
    return directory / (f"grpc:{port}" if endpoint == "grpc" else endpoint)


def private_directory() -> Path:
    """A new directory only this user can enter (0700), named for this process."""
    remove_stale_directories()
    return Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-"))
