"""`run.json`: what a predict run was asked to do, which models answered, what it counted and
how fast it went.

Written with the result files (atomically, like them) and read back by `report`, which checks
what it reads; the models' provenance comes from the servers (client/provenance.py).
"""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path
from typing import IO, Any

from virnucpro_triton.repository import FP8_ALL, FP8_FEED_FORWARD, FP8_NONE

RUN_INFO = "run.json"


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("virnucpro-triton", "tritonclient", "numpy"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:  # running from a source tree
            found[package] = "unknown"
    return found


def random_weights(models: dict[str, dict[str, Any]]) -> list[str]:
    """The entries whose weights are random (the demo's, the benchmark's)."""
    return [name for name, about in models.items() if about.get("random_weights") is True]


def describe(about: dict[str, Any]) -> str:
    """An entry's weights in a few words, for the end-of-run summary and the report."""
    if not about.get("source"):
        if "virnucpro_triton_version" in about:  # the pipeline: it holds no weights
            return f"no weights, virnucpro-triton {about['virnucpro_triton_version']}"
        return "no provenance recorded in its config.pbtxt"
    parts = [about["source"]]
    if about.get("source_sha256"):
        parts.append(f"sha256 {about['source_sha256'][:12]}")
    parts += [about[key] for key in ("dtype",) if key in about]
    fp8 = about.get("fp8", FP8_NONE)
    if fp8 in (FP8_FEED_FORWARD, FP8_ALL):
        parts.append(f"fp8 {fp8}")
    elif fp8 != FP8_NONE:  # the layers export chose
        parts.append(f"fp8 on {len(fp8.split(','))} linear layers")
    if about.get("random_weights") is True:
        parts.append("RANDOM WEIGHTS")
    return ", ".join(parts)


def write(
    handle: IO,
    *,
    settings: dict[str, Any],
    counts: dict[str, Any],
    endpoints: list[dict[str, Any]],
    models: dict[str, dict[str, Any]],
    started: str,
    seconds: float,
    start_seconds: float | None,
) -> None:
    """`settings` as given; `seconds` the run's wall time, from which throughput follows;
    `start_seconds` that of starting an embedded server before it (None: servers given)."""
    info = {
        "started": started,
        "settings": settings,
        "versions": versions(),
        "models": models,
        "counts": counts,
        "endpoints": endpoints,
        "start_seconds": None if start_seconds is None else round(start_seconds, 3),
        "wall_seconds": round(seconds, 3),
        "chunks_per_second": round(counts["chunks"] / seconds, 2) if seconds > 0 else None,
        "frames_per_second": round(counts["frames"] / seconds, 2) if seconds > 0 else None,
    }
    json.dump(info, handle, indent=2)
    handle.write("\n")


def read(out_dir: Path) -> dict[str, Any]:
    with open(out_dir / RUN_INFO) as handle:
        return json.load(handle)
