"""The batch-invariant mode (repository/spec.py BATCH_INVARIANT) without a server: the batches it
forms, the embedders and the classifier built as serving builds them, and the settings that
turn it on. Each comparison of bytes is also made without the mode, where it must find a
difference: so a comparison that could not see one would fail here."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from google.protobuf import json_format
from invariance import (
    differing_from_whole,
    embedded_in_batchings,
    export_invariant,
    random_sequences,
    rows_differing,
    served_embedder,
)

from virnucpro_triton import repository as repo
from virnucpro_triton.backends.factory import classifier_backend
from virnucpro_triton.cli import main
from virnucpro_triton.export import ExportError, export_repository
from virnucpro_triton.export.formats import format_of
from virnucpro_triton.export.verify import reference_dna, reference_protein
from virnucpro_triton.repository import (
    BATCH_INVARIANT,
    INVARIANT_CLASSIFIER_ROWS,
    INVARIANT_WIDTH_STEP,
    provenance_values,
)
from virnucpro_triton.sequence_embedders import _invariant_batches
from virnucpro_triton.server import backend_directory

CPU = torch.device("cpu")


def shape_of(length: int, token_budget: int, max_rows: int) -> tuple[int, int]:
    """The (rows, width) of the batches a sequence of `length` tokens lands in, from its
    length alone."""
    width = -(-length // INVARIANT_WIDTH_STEP) * INVARIANT_WIDTH_STEP
    return max(1, min(max_rows, token_budget // width)), width


@pytest.mark.parametrize(
    ("token_budget", "max_rows"),
    [(repo.TOKEN_BUDGET, repo.MAX_ROWS), (1000, 7), (64, 256), (10, 3)],
)
def test_invariant_batches_take_their_shape_from_each_sequence_alone(token_budget, max_rows):
    rng = random.Random(token_budget)
    # The widths' edges (a multiple of the step and one past it) among random lengths.
    lengths = [1, 15, 16, 17, 32, 33] + [rng.randrange(1, 700) for _ in range(600)]
    batches = _invariant_batches(lengths, token_budget, max_rows)
    assert sorted(i for batch, _ in batches for i in batch) == list(range(len(lengths)))
    rows_of_width: dict[int, set[int]] = {}
    for batch, (rows, width) in batches:
        assert 0 < len(batch) <= rows
        assert {shape_of(lengths[i], token_budget, max_rows) for i in batch} == {(rows, width)}
        rows_of_width.setdefault(width, set()).add(rows)
    assert all(len(rows) == 1 for rows in rows_of_width.values()), rows_of_width
    # The shape of a sequence sent alone is the one it has among the others.
    for i in rng.sample(range(len(lengths)), 20):
        ((_, alone),) = _invariant_batches([lengths[i]], token_budget, max_rows)
        assert alone == shape_of(lengths[i], token_budget, max_rows)


@pytest.fixture(scope="module")
def invariant_repository(tmp_path_factory) -> Path:
    return export_invariant(tmp_path_factory.mktemp("invariant") / "repository")


@pytest.mark.parametrize("name", [repo.DNABERT_S, repo.ESM2])
def test_an_embedding_is_the_same_bytes_in_any_batch(invariant_repository, name):
    sequences = random_sequences(name, 240)
    # A sample alone: in the mode, a batch of one sequence is as large as any of its width.
    alone = random.Random(5).sample(range(len(sequences)), 12)
    embed = served_embedder(invariant_repository, name, CPU)
    differing = differing_from_whole(embedded_in_batchings(embed, sequences, alone), alone)
    assert set(differing.values()) == {0}, differing
    # Without the mode the same comparisons see the last bits that batches move.
    embed = served_embedder(invariant_repository, name, CPU, batch_invariant=False)
    differing = differing_from_whole(embedded_in_batchings(embed, sequences, alone), alone)
    assert differing["alone"] > 0 and differing["parts"] > 0, differing


@pytest.mark.parametrize("name", [repo.DNABERT_S, repo.ESM2])
def test_invariant_fp32_embeddings_match_the_reference_model(invariant_repository, name):
    embed = served_embedder(invariant_repository, name, CPU)
    model, _ = repo.load_model(invariant_repository / name / "1")
    sequences = random_sequences(name, 120)
    reference = reference_dna if name == repo.DNABERT_S else reference_protein
    expected = reference(model, embed, sequences)  # one sequence at a time, unpadded
    assert np.abs(embed(sequences) - expected).max() <= 1e-5


def test_the_invariant_classifier_gives_each_row_the_same_bytes_in_any_batch(
    invariant_repository,
):
    version = invariant_repository / repo.classifier_name(300) / "1"
    input_dim = repo.read_architecture(version)["config"]["input_dim"]
    features = np.random.default_rng(28).normal(size=(700, input_dim)).astype(np.float32)
    sizes = (1, INVARIANT_CLASSIFIER_ROWS - 1, INVARIANT_CLASSIFIER_ROWS)
    sizes += (INVARIANT_CLASSIFIER_ROWS + 1, len(features))

    def in_batches(classify: Callable, size: int) -> np.ndarray:
        return np.concatenate([classify(features[i : i + size]) for i in range(0, 700, size)])

    classify = classifier_backend(version, CPU, batch_invariant=True)
    whole = classify(features)
    assert whole.shape == (700, 2)
    for size in sizes:
        assert rows_differing(whole, in_batches(classify, size)) == 0, size
    plain = classifier_backend(version, CPU)
    assert any(rows_differing(plain(features), in_batches(plain, size)) for size in sizes)
    model, _ = repo.load_model(version)
    with torch.inference_mode():
        alone = np.concatenate([model(torch.from_numpy(row[None])).numpy() for row in features])
    assert np.abs(whole - alone).max() <= 1e-5


def test_onnx_export_refuses_the_mode_before_writing_anything(tmp_path):
    with pytest.raises(ExportError, match="--batch-invariant needs --format torch"):
        format_of("onnx", batch_invariant=True)
    with pytest.raises(ExportError, match="--batch-invariant needs --format torch"):
        export_repository(
            tmp_path, tiny=True, format="onnx", batch_invariant=True, report=lambda _: None
        )
    assert list(tmp_path.iterdir()) == []
    out = tmp_path / "out"
    args = ["export", "--tiny", "--format", "onnx", "--batch-invariant", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    lines = result.stderr.splitlines()
    assert lines == ["virnucpro-triton: error: --batch-invariant needs --format torch"]
    assert not out.exists()


@pytest.mark.parametrize("name", [repo.DNABERT_S, repo.ESM2, repo.classifier_name(300)])
def test_a_batch_invariant_parameter_neither_true_nor_false_is_refused_naming_it(name, monkeypatch):
    monkeypatch.syspath_prepend(str(backend_directory() / "python"))  # triton_python_backend_utils
    from virnucpro_triton.serving.common import EntryConfig

    def flag(value: str) -> bool:
        widths = {repo.WIDTH: 32, repo.FEATURE_WIDTH: 64}
        config = repo.entry_config(repo.spec_of(name), widths, {BATCH_INVARIANT: value})
        as_json = json_format.MessageToJson(config, preserving_proto_field_name=True)
        return EntryConfig({"model_name": name, "model_config": as_json}).flag(BATCH_INVARIANT)

    assert (flag("true"), flag("false")) == (True, False)
    with pytest.raises(ValueError) as refused:
        flag("yes")
    assert str(refused.value) == f"{name}: parameter batch_invariant is 'yes', not true or false"


def test_provenance_reads_the_mode_as_a_boolean():
    assert provenance_values({BATCH_INVARIANT: "true"}) == {BATCH_INVARIANT: True}
    assert provenance_values({BATCH_INVARIANT: "false"}) == {BATCH_INVARIANT: False}
