"""Full-size models with random weights (speed does not depend on the values), or the demo's
sizes for --tiny, written as a model repository."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from virnucpro_triton import repository as repo
from virnucpro_triton.backends.torch_backend import TorchBackend
from virnucpro_triton.export.pipeline import export_pipeline
from virnucpro_triton.export.tiny import TINY_DNABERT, TINY_ESM2
from virnucpro_triton.models.dnabert_s import DnabertConfig, DnabertS, build_dna_bpe_tokenizer
from virnucpro_triton.models.esm2 import ESM2_SIZES, Esm2, Esm2Config
from virnucpro_triton.models.mlp import MLPClassifier
from virnucpro_triton.sequence_embedders import DnaEmbedder, ProteinEmbedder


def build_repository(repository: Path, tiny: bool, device: torch.device) -> dict:
    """Random-weight models in bf16 (fp32 for --tiny on CPU), written as repository entries."""
    dtype = "fp32" if tiny else "bf16"
    dna_config = TINY_DNABERT if tiny else DnabertConfig()
    esm_config = TINY_ESM2 if tiny else Esm2Config(*ESM2_SIZES["esm2_t36_3B_UR50D"])
    with torch.device(device):
        dnabert, esm2 = DnabertS(dna_config).eval(), Esm2(esm_config).eval()
        features = dna_config.hidden_size + esm_config.embed_dim
        classifier = MLPClassifier(features, 16 if tiny else 512).eval()
    for kind, model, dim in [
        (repo.DNABERT_S, dnabert, dna_config.hidden_size),
        (repo.ESM2, esm2, esm_config.embed_dim),
    ]:
        config = repo.entry_config(repo.spec_of(kind), {repo.WIDTH: dim})
        architecture = repo.architecture_of(kind, model, dtype)
        repo.write_entry(repository, config, model, architecture, source=repo.BENCH_SOURCE)
    tokenizer = repository / repo.DNABERT_S / "1" / repo.TOKENIZER
    build_dna_bpe_tokenizer(dna_config.vocab_size).save(str(tokenizer))
    write_classifiers(repository, classifier)
    export_pipeline(repository)
    half = repo.torch_dtype(dtype)
    return {
        "dnabert": dnabert.to(half),
        "esm2": esm2.to(half),
        "classifier": classifier,
        "tokenizer": tokenizer,
        "matmul_params": {"dna": matmul_params(dnabert), "protein": matmul_params(esm2)},
    }


def write_classifiers(repository: Path, classifier: MLPClassifier) -> None:
    features = classifier.hidden_layer.in_features
    architecture = repo.architecture_of("classifier", classifier, "fp32")
    for size in repo.CHUNK_SIZES:
        name = repo.classifier_name(size)
        config = repo.entry_config(repo.spec_of(name), {repo.FEATURE_WIDTH: features})
        repo.write_entry(repository, config, classifier, architecture, source=repo.BENCH_SOURCE)


@torch.inference_mode()
def balance_classifier(models: dict, repository: Path, frames: list, device: torch.device) -> None:
    """Shift the random classifier's output bias so that it calls half of `frames` virus.

    Random weights tend to call nearly every frame one class, and then any variant agrees with
    any other; balanced, verdict agreement between variants measures something.
    """
    dna = DnaEmbedder(TorchBackend(models["dnabert"], device), models["tokenizer"])
    protein = ProteinEmbedder(TorchBackend(models["esm2"], device))
    features = torch.from_numpy(
        np.concatenate(
            [dna([f.nucleotide for f in frames]), protein([f.protein for f in frames])], axis=1
        )
    ).to(device)
    classifier = models["classifier"]
    log_p = classifier(features).log()
    classifier.output_layer.bias[1] -= (log_p[:, 1] - log_p[:, 0]).median()
    write_classifiers(repository, classifier)


def matmul_params(model: torch.nn.Module) -> int:
    """Weights that multiply every token (2-D, not embedding tables): 2 FLOP each per token."""
    return sum(
        p.numel() for name, p in model.named_parameters() if p.dim() == 2 and "embed" not in name
    )
