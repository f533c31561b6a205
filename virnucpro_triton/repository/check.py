"""Whether a repository on disk can serve a run, said before a server start would fail."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from virnucpro_triton.errors import VirnucproError
from virnucpro_triton.repository.spec import (
    ARCHITECTURE,
    CHUNK_SIZES,
    DNABERT_S,
    ESM2,
    ONNX,
    PIPELINE,
    WEIGHTS,
    chunk_size_of,
    classifier_name,
    onnx_name,
)
from virnucpro_triton.repository.weights import read_architecture


class RepositoryError(VirnucproError, ValueError):
    """A repository that cannot serve a run; the message says how to get one that can."""


# How to export each entry: the Makefile's variable and the checkpoint it takes.
_EXPORT_ARGUMENTS = {
    DNABERT_S: "DNABERT_S=DNABERT-S_DIR",
    ESM2: "ESM2=esm2_t36_3B_UR50D.pt",
    **{classifier_name(s): f"CLASSIFIER_{s}={s}_model.pth" for s in CHUNK_SIZES},
}


def classifier_sizes(repository: Path) -> list[int]:
    """The chunk sizes of the classifier entries exported into `repository`, ascending."""
    return sorted(
        size
        for path in (repository.iterdir() if repository.is_dir() else ())
        if (size := chunk_size_of(path.name)) and (path / "config.pbtxt").is_file()
    )


def _entry_problem(entry: Path) -> str | None:
    """Why the server could not load `entry`, or None."""
    if not entry.is_dir():
        return "missing"
    if not (entry / "config.pbtxt").is_file():
        return "not exported (no config.pbtxt)"
    if entry.name == PIPELINE or entry.name.endswith("_onnx"):
        return None
    version = entry / "1"
    if not (version / ARCHITECTURE).is_file():
        return f"incomplete (no 1/{ARCHITECTURE})"
    if read_architecture(version)["runtime"] == ONNX:
        return _entry_problem(entry.parent / onnx_name(entry.name))
    return None if (version / WEIGHTS).is_file() else f"incomplete (no 1/{WEIGHTS})"


def check_entries(repository: Path, needed: Iterable[str]) -> None:
    """Raise RepositoryError unless `repository` holds every `needed` entry, complete, and
    nothing the server would fail to load (it loads every entry there).

    Checked in milliseconds before a server start, which would take a minute to fail.
    """
    repository = Path(repository)
    present = (
        sorted(p.name for p in repository.iterdir() if p.is_dir() and not p.name.startswith("."))
        if repository.is_dir()
        else []
    )
    # Our entries there must be complete; entries of the user's own beside them are Triton's to
    # judge. Nothing asked for and nothing there (`serve` of an empty directory): a whole one.
    ours = [n for n in present if n == PIPELINE or n in _EXPORT_ARGUMENTS]
    whole = [] if present else [PIPELINE, *_EXPORT_ARGUMENTS]
    names = list(dict.fromkeys([*needed, *ours])) or whole
    problems = {n: p for n in names if (p := _entry_problem(repository / n))}
    if not problems:
        return
    weighted = [n for n in problems if n in _EXPORT_ARGUMENTS] or [
        n for n in names if n in _EXPORT_ARGUMENTS
    ]
    target = "" if repository == Path("model_repository") else f" REPOSITORY={repository}"
    export = " ".join(["make export", *(_EXPORT_ARGUMENTS[n] for n in weighted)]) + target
    listed = ", ".join(f"{n} {p}" for n, p in problems.items())
    if not repository.is_dir():
        listed = f"it does not exist (the run needs {', '.join(problems)})"
    raise RepositoryError(
        f"model repository {repository} cannot serve this run: {listed}. Export the real "
        f"checkpoints with `{export}` (README: Checkpoints), or run the demo's tiny "
        "random-weight models with `--repository build/demo_repository` (`make demo` writes it)"
    )
