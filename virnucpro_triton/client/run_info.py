"""`run.json`: what a predict run was asked to do, what it counted and how fast it went.

Written with the result files (atomically, like them) and read back by `report`, which checks
what it reads.
"""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path
from typing import IO, Any

RUN_INFO = "run.json"


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("virnucpro-triton", "tritonclient", "numpy"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:  # running from a source tree
            found[package] = "unknown"
    return found


def write(
    handle: IO,
    *,
    settings: dict[str, Any],
    counts: dict[str, Any],
    endpoints: list[dict[str, Any]],
    started: str,
    seconds: float,
) -> None:
    """`settings` as given; `seconds` the run's wall time, from which throughput follows."""
    info = {
        "started": started,
        "settings": settings,
        "versions": versions(),
        "counts": counts,
        "endpoints": endpoints,
        "wall_seconds": round(seconds, 3),
        "chunks_per_second": round(counts["chunks"] / seconds, 2) if seconds > 0 else None,
        "frames_per_second": round(counts["frames"] / seconds, 2) if seconds > 0 else None,
    }
    json.dump(info, handle, indent=2)
    handle.write("\n")


def read(out_dir: Path) -> dict[str, Any]:
    with open(out_dir / RUN_INFO) as handle:
        return json.load(handle)
