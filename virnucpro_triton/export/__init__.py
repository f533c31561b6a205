"""Checkpoints (real ones from local paths, or tiny random ones) -> verified repository entries."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from virnucpro_triton import checkpoints
from virnucpro_triton import repository as repo
from virnucpro_triton.export.repository_writer import (
    Check,
    VerificationError,
    export_classifier,
    export_dnabert_s,
    export_esm2,
    export_pipeline,
)
from virnucpro_triton.export.tiny import tiny_models

__all__ = ["VerificationError", "export_repository"]


def export_repository(
    out: Path,
    *,
    dnabert_s: Path | None = None,
    esm2: Path | None = None,
    classifiers: dict[int, Path] | None = None,
    dtype: str = "fp32",
    tiny: bool = False,
    report: Callable[[str], None] = print,
) -> list[Check]:
    """Export what was given (any subset) into `out`, plus the pipeline entry.

    The classifiers stay in fp32 whatever `dtype` says: they are tiny and sit at the verdict.
    """
    checks: list[Check] = []
    with tempfile.TemporaryDirectory() as scratch:
        if tiny:
            dna_model, tokenizer, esm_model, classifier_models = tiny_models(Path(scratch))
            report("building tiny RANDOM-WEIGHT models (demo/tests only: verdicts are meaningless)")
        else:
            dna_model = tokenizer = esm_model = None
            if dnabert_s is not None:
                dna_model, _, tokenizer = checkpoints.load_dnabert_s(dnabert_s)
            if esm2 is not None:
                esm_model, _ = checkpoints.load_esm2(esm2)
            classifier_models = {
                size: checkpoints.load_classifier(path)
                for size, path in (classifiers or {}).items()
            }
        _check_feature_sizes(out, dna_model, esm_model, classifier_models)
        if dna_model is not None:
            checks.append(export_dnabert_s(out, dna_model, tokenizer, dtype))
        if esm_model is not None:
            checks.append(export_esm2(out, esm_model, dtype))
        for size, model in sorted(classifier_models.items()):
            checks.append(export_classifier(out, size, model, "fp32"))
    export_pipeline(out)
    for check in checks:
        report(f"verified {check.describe()}")
    report(f"model repository ready: {out}")
    return checks


def _check_feature_sizes(out: Path, dna_model, esm_model, classifier_models) -> None:
    """A classifier must take exactly DNABERT-S dim + ESM-2 dim features."""

    def dim(model, attr: str, entry: str) -> int | None:
        if model is not None:
            return getattr(model.config, attr)
        if (out / entry / "1" / repo.ARCHITECTURE).exists():
            return repo.read_architecture(out / entry / "1")["config"][attr]
        return None

    dna_dim = dim(dna_model, "hidden_size", repo.DNABERT_S)
    esm_dim = dim(esm_model, "embed_dim", repo.ESM2)
    for size, model in classifier_models.items():
        expected = model.hidden_layer.in_features
        if dna_dim is not None and esm_dim is not None and dna_dim + esm_dim != expected:
            raise VerificationError(
                f"the {size}-bp classifier takes {expected} features but DNABERT-S ({dna_dim}) + "
                f"ESM-2 ({esm_dim}) give {dna_dim + esm_dim}: wrong checkpoint for these models"
            )
