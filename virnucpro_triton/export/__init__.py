"""Checkpoints (real ones from local paths, or tiny random ones) -> verified repository entries.

By job: checkpoints.py loads the real formats, tiny.py makes random models, formats/ writes
each format behind one interface, verify.py checks every entry before it is published,
fp8_choice.py decides ESM-2's FP8 layers, pipeline.py writes the pipeline entry; this module
runs them in order.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from virnucpro_triton import repository as repo
from virnucpro_triton.export import checkpoints
from virnucpro_triton.export.formats import FORMATS, ExportError, format_of
from virnucpro_triton.export.pipeline import export_pipeline
from virnucpro_triton.export.tiny import tiny_models
from virnucpro_triton.export.verify import Check, VerificationError

__all__ = ["FORMATS", "ExportError", "VerificationError", "export_repository"]


def export_repository(
    out: Path,
    *,
    dnabert_s: Path | None = None,
    esm2: Path | None = None,
    classifiers: dict[int, Path] | None = None,
    dtype: str = "fp32",
    fp8: str = repo.FP8_NONE,
    format: str = "torch",
    batch_invariant: bool = False,
    tiny: bool = False,
    chunk_sizes: tuple[int, ...] = repo.CHUNK_SIZES,
    report: Callable[[str], None] = print,
) -> list[Check]:
    """Export what was given (any subset) into `out`, plus the pipeline entry.

    The classifiers stay in fp32 whatever `dtype` says: they are tiny and sit at the verdict.
    `format` "onnx" writes ONNX compute entries behind the same Python entries
    (formats/onnx_format.py); it is fp32 only. `fp8` (bf16 only; models/fp8.py) runs ESM-2's
    linear layers in FP8 on GPUs that have it: "auto" those that keep the accuracy rule on
    these weights, "feed_forward", "all" or a list of layers as given, refused when they miss
    it (fp8_choice.py). `batch_invariant` writes entries whose results do not depend on the
    batch a row lands in (repository/spec.py BATCH_INVARIANT). `chunk_sizes`: the tiny
    classifiers to make (one entry each); the pipeline serves every classifier the repository
    then holds. Settings that do not go
    together, or nothing to export, raise ExportError before anything is written.
    """
    if not tiny and not (dnabert_s or esm2 or classifiers):
        sizes = "/".join(str(size) for size in repo.CHUNK_SIZES)
        raise ExportError(
            f"nothing to export: give --dnabert-s, --esm2, --classifier-{sizes} or --tiny"
        )
    writer = format_of(format, dtype, fp8, batch_invariant)
    checks: list[Check] = []
    with tempfile.TemporaryDirectory() as scratch:
        if tiny:
            dna_model, tokenizer, esm_model, classifier_models = tiny_models(
                Path(scratch), chunk_sizes=chunk_sizes
            )
            report("building tiny RANDOM-WEIGHT models (demo/tests only: verdicts are meaningless)")
            keys = [repo.DNABERT_S, repo.ESM2, *classifier_models]
            sources = dict.fromkeys(keys, repo.TINY_SOURCE)
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
            # Hashed once here, recorded in each entry's config (repository.PROVENANCE).
            given = {repo.DNABERT_S: dnabert_s, repo.ESM2: esm2, **(classifiers or {})}
            sources = {key: repo.Source.of(path) for key, path in given.items() if path}
        _check_feature_sizes(out, dna_model, esm_model, classifier_models)
        if dna_model is not None:
            checks.append(writer.dnabert_s(out, dna_model, tokenizer, sources[repo.DNABERT_S]))
        for size, model in sorted(classifier_models.items()):
            checks.append(writer.classifier(out, size, model, sources[size]))
        if esm_model is not None:  # last: its FP8 check runs through DNABERT-S and classifiers
            checks.append(writer.esm2(out, esm_model, sources[repo.ESM2]))
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
