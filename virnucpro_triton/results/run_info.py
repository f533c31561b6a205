"""`run.json`: what a predict run was asked to do, which models answered, what it counted and
how fast it went.

Written with the result files (atomically, like them) and read back by `report`, which checks
what it reads.
"""

from __future__ import annotations

import json
import logging
import platform
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from virnucpro_triton.repository import PROVENANCE

RUN_INFO = "run.json"
_log = logging.getLogger(__name__)


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("virnucpro-triton", "tritonclient", "numpy"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:  # running from a source tree
            found[package] = "unknown"
    return found


def provenance(url: str, names: Iterable[str]) -> dict[str, dict[str, str]]:
    """Where each entry's weights came from, as its config parameters say (export writes
    repository.PROVENANCE and esm2's fp8); {} for an entry exported before they existed."""
    found = {}
    with grpcclient.InferenceServerClient(url) as client:
        for name in names:
            config = client.get_model_config(name, as_json=True, client_timeout=30)["config"]
            parameters = config.get("parameters", {})
            found[name] = {
                key: parameters[key].get("string_value", "")
                for key in (*PROVENANCE, "fp8")
                if key in parameters
            }
    return found


def models(urls: Iterable[str], names: Iterable[str]) -> dict[str, dict[str, str]]:
    """The provenance of `names` on the first server; a warning when another one serves other
    models (results then mix them)."""
    names = list(names)
    first, *others = list(urls)
    try:
        found = provenance(first, names)
        for url in others:
            if provenance(url, names) != found:
                _log.warning("%s serves other models than %s: results mix them", url, first)
    except InferenceServerException as error:  # the run is done: say so, do not fail it
        _log.warning("could not read the models' provenance: %s", error.message())
        return {}
    return found


def random_weights(models: dict[str, dict[str, str]]) -> list[str]:
    """The entries whose weights are random (the demo's, the benchmark's)."""
    return [name for name, about in models.items() if about.get("random_weights") == "true"]


def describe(about: dict[str, str]) -> str:
    """An entry's weights in a few words, for the end-of-run summary and the report."""
    if not about.get("source"):
        if "virnucpro_triton_version" in about:  # the pipeline: it holds no weights
            return f"no weights, virnucpro-triton {about['virnucpro_triton_version']}"
        return "no provenance recorded (exported by an older version)"
    parts = [about["source"]]
    if about.get("source_sha256"):
        parts.append(f"sha256 {about['source_sha256'][:12]}")
    parts += [about[key] for key in ("dtype",) if key in about]
    if about.get("fp8", "none") != "none":
        parts.append(f"fp8 {about['fp8']}")
    if about.get("random_weights") == "true":
        parts.append("RANDOM WEIGHTS")
    return ", ".join(parts)


def write(
    handle: IO,
    *,
    settings: dict[str, Any],
    counts: dict[str, Any],
    endpoints: list[dict[str, Any]],
    models: dict[str, dict[str, str]],
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
