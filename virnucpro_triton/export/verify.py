"""The verification kit every export format uses.

Every entry is written to a staging directory, loaded back exactly as the server will load
it (backends/factory.py), run on a fixed probe batch and compared with the reference
computation (the source model in fp32, one sequence at a time and unpadded, the way VirNucPro
ran it). Only an entry within tolerance is moved into the repository (`publish`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from virnucpro_triton.errors import VirnucproError
from virnucpro_triton.models.dnabert_s import DnabertS
from virnucpro_triton.models.esm2 import Esm2
from virnucpro_triton.sequence import six_frames
from virnucpro_triton.sequence_embedders import DnaEmbedder, ProteinEmbedder

# Probe inputs: the frames of a fixed pseudo-random DNA chunk plus short and odd cases.
_rng = np.random.default_rng(20240521)
_PROBE_DNA = ["".join(_rng.choice(list("ACGT"), 501)), "ACGTNACGTA", "ATG", "GATTACA" * 40]
_PROBE_PROTEIN = ["MKV", "A", "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTEXB", "W" * 166]

FP32_MAX_ABS = 1e-5
HALF_MIN_COSINE = 0.999


def verify_device() -> torch.device:
    """Where export runs its checks: a GPU when there is one (ESM-2 3B on a CPU takes long)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class VerificationError(VirnucproError, RuntimeError):
    """An entry that did not reproduce the reference; nothing was written for it."""


@dataclass(frozen=True)
class Check:
    entry: str
    max_abs: float
    min_cosine: float
    dtype: str
    fp32_max_abs: float = field(default=FP32_MAX_ABS, compare=False)
    note: str = ""  # what else ran, e.g. FP8 matmuls

    def passed(self) -> bool:
        if self.dtype == "fp32":
            return self.max_abs <= self.fp32_max_abs
        return self.min_cosine >= HALF_MIN_COSINE

    def describe(self) -> str:
        limit = (
            f"max abs <= {self.fp32_max_abs:g}"
            if self.dtype == "fp32"
            else (f"cosine >= {HALF_MIN_COSINE}")
        )
        what = ", ".join(filter(None, (self.dtype, self.note)))
        return (
            f"{self.entry} ({what}): max abs diff {self.max_abs:.3g}, "
            f"min cosine {self.min_cosine:.6f}; tolerance {limit}"
        )


def compare(
    entry: str,
    dtype: str,
    reference: np.ndarray,
    candidate: np.ndarray,
    fp32_max_abs: float = FP32_MAX_ABS,
) -> Check:
    ref = torch.from_numpy(reference).double()
    got = torch.from_numpy(candidate).double()
    cosine = torch.nn.functional.cosine_similarity(ref, got, dim=-1).min().item()
    return Check(entry, (ref - got).abs().max().item(), cosine, dtype, fp32_max_abs)


def probe_frames() -> tuple[list[str], list[str]]:
    frames = [f for chunk in _PROBE_DNA for f in six_frames(chunk) if f is not None]
    return _PROBE_DNA + [f.nucleotide for f in frames], _PROBE_PROTEIN + [f.protein for f in frames]


def probe_features(input_dim: int) -> np.ndarray:
    return np.random.default_rng(7).normal(size=(64, input_dim)).astype(np.float32)


@torch.inference_mode()
def reference_dna(model: DnabertS, embedder: DnaEmbedder, sequences: list[str]) -> np.ndarray:
    """One sequence at a time, unpadded, fp32, on the model's device."""
    device = next(model.parameters()).device
    rows = []
    for ids in embedder.tokenize(sequences):
        t = torch.tensor([ids], device=device)
        rows.append(model.embed(t, torch.ones_like(t, dtype=torch.bool))[0].cpu().numpy())
    return np.stack(rows)


@torch.inference_mode()
def reference_protein(model: Esm2, embedder: ProteinEmbedder, sequences: list[str]) -> np.ndarray:
    device = next(model.parameters()).device
    return np.stack(
        [
            model.embed(torch.tensor([ids], device=device))[0].cpu().numpy()
            for ids in embedder.tokenize(sequences)
        ]
    )


def make_readable(path: Path) -> None:
    """Files 0644 and folders 0755 under `path`, whatever the umask: the server (the image runs
    as uid 1000) may be another user than the exporter, and safetensors writes 0600."""
    path.chmod(0o755)
    for folder, dirs, files in os.walk(path):
        for name in dirs:
            os.chmod(os.path.join(folder, name), 0o755)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o644)


def publish(
    repository: Path, write: Callable[[Path], list[Path]], verify: Callable[[Path], Check]
) -> Check:
    """Write entries into a staging directory, verify them there, then move them into place.

    `write` returns the entry directories it made in the staging directory; `verify` gets
    that directory. Nothing reaches `repository` unless the check passes.
    """
    repository.mkdir(parents=True, exist_ok=True)
    mode = repository.stat().st_mode
    if mode & 0o755 != 0o755:  # the server must list it; a group's write bit may stay
        repository.chmod(mode | 0o755)
    with tempfile.TemporaryDirectory(dir=repository, prefix=".staging-") as staging:
        entries = write(Path(staging))
        check = verify(Path(staging))
        if not check.passed():
            raise VerificationError(f"refused to write {check.describe()}")
        for entry in entries:
            target = repository / entry.name
            shutil.rmtree(target, ignore_errors=True)
            make_readable(entry)
            shutil.move(str(entry), target)
    return check
