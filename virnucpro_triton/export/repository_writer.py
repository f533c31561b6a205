"""Turn loaded models into verified model-repository entries.

Every entry is written to a staging directory, loaded back exactly as the server will load
it, run on a fixed probe batch and compared with the reference computation (the source model
in fp32, one sequence at a time and unpadded, the way VirNucPro ran it). Only an entry within
tolerance is moved into the repository.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from virnucpro_triton import repository as repo
from virnucpro_triton.embedders import DnaEmbedder, ProteinEmbedder
from virnucpro_triton.models.classifier import MLPClassifier
from virnucpro_triton.models.dnabert_s import DnabertS
from virnucpro_triton.models.esm2 import Esm2
from virnucpro_triton.sequence import six_frames

# Probe inputs: the frames of a fixed pseudo-random DNA chunk plus short and odd cases.
_rng = np.random.default_rng(20240521)
_PROBE_DNA = ["".join(_rng.choice(list("ACGT"), 501)), "ACGTNACGTA", "ATG", "GATTACA" * 40]
_PROBE_PROTEIN = ["MKV", "A", "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTEXB", "W" * 166]

FP32_MAX_ABS = 1e-5
HALF_MIN_COSINE = 0.999


class VerificationError(RuntimeError):
    """An entry that did not reproduce the reference; nothing was written for it."""


@dataclass(frozen=True)
class Check:
    entry: str
    max_abs: float
    min_cosine: float
    dtype: str

    def passed(self) -> bool:
        if self.dtype == "fp32":
            return self.max_abs <= FP32_MAX_ABS
        return self.min_cosine >= HALF_MIN_COSINE

    def describe(self) -> str:
        limit = (
            f"max abs <= {FP32_MAX_ABS:g}"
            if self.dtype == "fp32"
            else (f"cosine >= {HALF_MIN_COSINE}")
        )
        return (
            f"{self.entry} ({self.dtype}): max abs diff {self.max_abs:.3g}, "
            f"min cosine {self.min_cosine:.6f}; tolerance {limit}"
        )


def _compare(entry: str, dtype: str, reference: np.ndarray, candidate: np.ndarray) -> Check:
    ref = torch.from_numpy(reference).double()
    got = torch.from_numpy(candidate).double()
    cosine = torch.nn.functional.cosine_similarity(ref, got, dim=-1).min().item()
    return Check(entry, (ref - got).abs().max().item(), cosine, dtype)


def _probe_frames() -> tuple[list[str], list[str]]:
    frames = [f for chunk in _PROBE_DNA for f in six_frames(chunk) if f is not None]
    return _PROBE_DNA + [f.nucleotide for f in frames], _PROBE_PROTEIN + [f.protein for f in frames]


@torch.inference_mode()
def _reference_dna(model: DnabertS, embedder: DnaEmbedder, sequences: list[str]) -> np.ndarray:
    fp32 = model.float()
    rows = []
    for ids in embedder.tokenize(sequences):
        t = torch.tensor([ids])
        rows.append(fp32.embed(t, torch.ones_like(t, dtype=torch.bool))[0].numpy())
    return np.stack(rows)


@torch.inference_mode()
def _reference_protein(model: Esm2, embedder: ProteinEmbedder, sequences: list[str]) -> np.ndarray:
    fp32 = model.float()
    return np.stack(
        [fp32.embed(torch.tensor([ids]))[0].numpy() for ids in embedder.tokenize(sequences)]
    )


def _export(
    repository: Path,
    config,
    model: torch.nn.Module,
    kind: str,
    dtype: str,
    verify: Callable[[Path], Check],
    extra_files: tuple[Path, ...] = (),
) -> Check:
    """Write an entry into a staging directory, verify it there, then move it into place."""
    repository.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=repository, prefix=".staging-") as staging:
        entry = repo.write_entry(
            Path(staging), config, model, repo.architecture_of(kind, model, dtype)
        )
        for path in extra_files:
            shutil.copyfile(path, entry / "1" / path.name)
        check = verify(entry / "1")
        if not check.passed():
            raise VerificationError(f"refused to write {check.describe()}")
        target = repository / entry.name
        shutil.rmtree(target, ignore_errors=True)
        shutil.move(str(entry), target)
    return check


def export_dnabert_s(repository: Path, model: DnabertS, tokenizer_json: Path, dtype: str) -> Check:
    model = model.float().eval()

    def verify(version: Path) -> Check:
        served = DnaEmbedder(
            repo.load_model(version)[0], version / repo.TOKENIZER, torch.device("cpu")
        )
        dna, _ = _probe_frames()
        return _compare(repo.DNABERT_S, dtype, _reference_dna(model, served, dna), served(dna))

    config = repo.model_config(
        repo.DNABERT_S, *repo.embedder_tensors(model.config.hidden_size), repo.EMBEDDER_MAX_BATCH
    )
    return _export(repository, config, model, repo.DNABERT_S, dtype, verify, (tokenizer_json,))


def export_esm2(repository: Path, model: Esm2, dtype: str) -> Check:
    model = model.float().eval()

    def verify(version: Path) -> Check:
        served = ProteinEmbedder(repo.load_model(version)[0], torch.device("cpu"))
        _, protein = _probe_frames()
        return _compare(
            repo.ESM2, dtype, _reference_protein(model, served, protein), served(protein)
        )

    config = repo.model_config(
        repo.ESM2, *repo.embedder_tensors(model.config.embed_dim), repo.EMBEDDER_MAX_BATCH
    )
    return _export(repository, config, model, repo.ESM2, dtype, verify)


def export_classifier(repository: Path, chunk_size: int, model: MLPClassifier, dtype: str) -> Check:
    model = model.float().eval()
    name = repo.classifier_name(chunk_size)
    input_dim = model.hidden_layer.in_features
    probe = np.random.default_rng(7).normal(size=(64, input_dim)).astype(np.float32)

    def verify(version: Path) -> Check:
        served = repo.load_model(version)[0]
        with torch.inference_mode():
            reference = model(torch.from_numpy(probe)).numpy()
            x = torch.from_numpy(probe).to(next(served.parameters()).dtype)
            candidate = served(x).float().numpy()
        return _compare(name, dtype, reference, candidate)

    config = repo.model_config(name, *repo.classifier_tensors(input_dim), repo.EMBEDDER_MAX_BATCH)
    return _export(repository, config, model, "classifier", dtype, verify)


def export_pipeline(repository: Path) -> Path:
    config = repo.model_config(
        repo.PIPELINE, repo.PIPELINE_INPUTS, repo.PIPELINE_OUTPUTS, repo.PIPELINE_MAX_BATCH
    )
    return repo.write_entry(repository, config)
