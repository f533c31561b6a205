"""Turn loaded models into verified model-repository entries.

Every entry is written to a staging directory, loaded back exactly as the server will load
it, run on a fixed probe batch and compared with the reference computation (the source model
in fp32, one sequence at a time and unpadded, the way VirNucPro ran it). Only an entry within
tolerance is moved into the repository. The ONNX format (onnx_export.py) reuses the probes, the
references and `publish`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from virnucpro_triton import repository as repo
from virnucpro_triton.embedders import DnaEmbedder, ProteinEmbedder
from virnucpro_triton.errors import VirnucproError
from virnucpro_triton.export.fp8_choice import choose_fp8
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


def _export(
    repository: Path,
    config,
    model: torch.nn.Module,
    kind: str,
    dtype: str,
    verify: Callable[[Path], Check],
    source: repo.Source,
    files: tuple[Path, ...] = (),
) -> Check:
    """One torch-format entry; `verify` gets its staged version directory."""

    def write(staging: Path) -> list[Path]:
        architecture = repo.architecture_of(kind, model, dtype)
        return [repo.write_entry(staging, config, model, architecture, files, source)]

    check = publish(repository, write, lambda staging: verify(staging / config.name / "1"))
    # An earlier ONNX export's compute entry is now orphaned, and unloadable without onnxruntime.
    shutil.rmtree(repository / repo.onnx_name(config.name), ignore_errors=True)
    return check


def export_dnabert_s(
    repository: Path, model: DnabertS, tokenizer_json: Path, dtype: str, source: repo.Source
) -> Check:
    model = model.float().eval()

    def verify(version: Path) -> Check:
        device = verify_device()
        model.to(device)
        served = DnaEmbedder(repo.load_model(version)[0], version / repo.TOKENIZER, device)
        dna, _ = probe_frames()
        return compare(repo.DNABERT_S, dtype, reference_dna(model, served, dna), served(dna))

    config = _config(repo.DNABERT_S, {repo.WIDTH: model.config.hidden_size})
    return _export(
        repository, config, model, repo.DNABERT_S, dtype, verify, source, (tokenizer_json,)
    )


def export_esm2(
    repository: Path, model: Esm2, dtype: str, source: repo.Source, fp8: str = repo.FP8_NONE
) -> Check:
    """`fp8` other than none (bf16 only) is decided on the staged entry (fp8_choice.py) against
    the DNABERT-S and classifiers already in `repository`, and written into its config with the
    numbers; the entry is then checked against fp32 as served on this machine."""
    model = model.float().eval()
    config = _config(repo.ESM2, {repo.WIDTH: model.config.embed_dim})

    def verify(version: Path) -> Check:
        device = verify_device()
        model.to(device)
        loaded = repo.load_model(version, device)[0]
        setting, verified = fp8, ""
        if fp8 != repo.FP8_NONE:
            setting, verified = choose_fp8(fp8, loaded, repository, device)
            config.parameters["fp8"].string_value = setting
            config.parameters[repo.FP8_VERIFIED].string_value = verified
            repo.write_config(version.parent, config)
        note = "; ".join(filter(None, (repo.apply_fp8(loaded, setting, device), verified)))
        served = ProteinEmbedder(loaded, device)
        _, protein = probe_frames()
        reference = reference_protein(model, served, protein)
        return replace(compare(repo.ESM2, dtype, reference, served(protein)), note=note)

    return _export(repository, config, model, repo.ESM2, dtype, verify, source)


def export_classifier(
    repository: Path, chunk_size: int, model: MLPClassifier, dtype: str, source: repo.Source
) -> Check:
    model = model.float().eval()
    name = repo.classifier_name(chunk_size)
    input_dim = model.hidden_layer.in_features
    probe = probe_features(input_dim)

    def verify(version: Path) -> Check:
        served = repo.load_model(version)[0]
        with torch.inference_mode():
            reference = model(torch.from_numpy(probe)).numpy()
            x = torch.from_numpy(probe).to(next(served.parameters()).dtype)
            candidate = served(x).float().numpy()
        return compare(name, dtype, reference, candidate)

    config = _config(name, {repo.FEATURE_WIDTH: input_dim})
    return _export(repository, config, model, "classifier", dtype, verify, source)


def _config(name: str, widths: dict[str, int], parameters: dict[str, str] | None = None):
    return repo.entry_config(repo.spec_of(name), widths, parameters)


def export_pipeline(repository: Path) -> Path:
    """The pipeline entry, told the max_batch_size of each entry it calls as their configs beside
    it declare (an entry not there yet: its spec's), so that it splits its calls to fit them.
    The classifiers there are the chunk sizes it serves."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    def max_batch_size(name: str) -> int:
        path = repository / name / "config.pbtxt"
        if not path.is_file():
            return repo.spec_of(name).max_batch_size
        return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig()).max_batch_size

    present = repo.classifier_sizes(repository)
    names = [repo.DNABERT_S, repo.ESM2, *map(repo.classifier_name, present)]
    calls = {name: max_batch_size(name) for name in names}
    config = _config(repo.PIPELINE, {}, {repo.CALLS: json.dumps(calls)})
    entry = repo.write_entry(repository, config)
    make_readable(entry)
    return entry
