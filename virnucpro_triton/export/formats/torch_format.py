"""Torch format: each entry holds its weights (safetensors) and is served by the Python backend."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from virnucpro_triton import repository as repo
from virnucpro_triton.backends.factory import classifier_backend, embedding_backend
from virnucpro_triton.backends.torch_backend import TorchBackend, apply_fp8
from virnucpro_triton.export.fp8_choice import choose_fp8
from virnucpro_triton.export.verify import (
    Check,
    compare,
    probe_features,
    probe_frames,
    publish,
    reference_dna,
    reference_protein,
    verify_device,
)
from virnucpro_triton.models.dnabert_s import DnabertS
from virnucpro_triton.models.esm2 import Esm2
from virnucpro_triton.models.mlp import MLPClassifier
from virnucpro_triton.sequence_embedders import DnaEmbedder, ProteinEmbedder


@dataclass(frozen=True)
class TorchFormat:
    """Embedders in `dtype`, ESM-2 with the `fp8` setting (bf16 only: fp8_choice.py decides
    `auto`); the classifiers stay fp32 whatever `dtype` says: they are tiny and sit at the
    verdict. `batch_invariant`: the entries' setting (repository/spec.py BATCH_INVARIANT), which
    verification then runs with."""

    dtype: str = "fp32"
    fp8: str = repo.FP8_NONE
    batch_invariant: bool = False

    def _config(self, name: str, widths: dict[str, int]):
        setting = {repo.BATCH_INVARIANT: str(self.batch_invariant).lower()}
        return repo.entry_config(repo.spec_of(name), widths, setting)

    def dnabert_s(
        self, repository: Path, model: DnabertS, tokenizer_json: Path, source: repo.Source
    ) -> Check:
        model = model.float().eval()
        width = model.config.hidden_size

        def verify(version: Path) -> Check:
            device = verify_device()
            model.to(device)
            invariant = self.batch_invariant
            backend = embedding_backend(version, device, width, batch_invariant=invariant)
            served = DnaEmbedder(backend, version / repo.TOKENIZER, batch_invariant=invariant)
            dna, _ = probe_frames()
            reference = reference_dna(model, served, dna)
            return compare(repo.DNABERT_S, self.dtype, reference, served(dna))

        config = self._config(repo.DNABERT_S, {repo.WIDTH: width})
        return _export(
            repository, config, model, repo.DNABERT_S, self.dtype, verify, source, (tokenizer_json,)
        )

    def esm2(self, repository: Path, model: Esm2, source: repo.Source) -> Check:
        """An `fp8` other than none is decided on the staged entry (fp8_choice.py) against the
        DNABERT-S and classifiers already in `repository`, and written into its config with the
        numbers; the entry is then checked against fp32 as served on this machine."""
        model = model.float().eval()
        config = self._config(repo.ESM2, {repo.WIDTH: model.config.embed_dim})

        def verify(version: Path) -> Check:
            device = verify_device()
            model.to(device)
            loaded = repo.load_model(version, device)[0]
            setting, verified = self.fp8, ""
            if self.fp8 != repo.FP8_NONE:
                setting, verified = choose_fp8(self.fp8, loaded, repository, device)
                config.parameters["fp8"].string_value = setting
                config.parameters[repo.FP8_VERIFIED].string_value = verified
                repo.write_config(version.parent, config)
            # The model already loaded (ESM-2 3B is large), with the setting chosen on it.
            backend = TorchBackend(loaded, device, fp8=apply_fp8(loaded, setting, device))
            served = ProteinEmbedder(backend, batch_invariant=self.batch_invariant)
            _, protein = probe_frames()
            reference = reference_protein(model, served, protein)
            check = compare(repo.ESM2, self.dtype, reference, served(protein))
            return replace(check, note="; ".join(filter(None, (backend.fp8, verified))))

        return _export(repository, config, model, repo.ESM2, self.dtype, verify, source)

    def classifier(
        self, repository: Path, chunk_size: int, model: MLPClassifier, source: repo.Source
    ) -> Check:
        model = model.float().eval()
        name = repo.classifier_name(chunk_size)
        input_dim = model.hidden_layer.in_features
        probe = probe_features(input_dim)

        def verify(version: Path) -> Check:
            served = classifier_backend(
                version, torch.device("cpu"), batch_invariant=self.batch_invariant
            )
            with torch.inference_mode():
                reference = model(torch.from_numpy(probe)).numpy()
            return compare(name, "fp32", reference, served(probe))

        config = self._config(name, {repo.FEATURE_WIDTH: input_dim})
        return _export(repository, config, model, "classifier", "fp32", verify, source)


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
