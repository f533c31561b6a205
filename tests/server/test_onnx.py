"""`export --format onnx`: graphs checked with onnxruntime (CPU) against the torch models.

The `*_onnx` entries need Triton's onnxruntime backend, which only the NGC containers have (the
embedded tritonserver here has the Python backend alone), so they are not served as written.
One test swaps them for Python-backend stand-ins that run the same model.onnx with onnxruntime,
to check the served string-facing entries' BLS forwarding end to end.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from click.testing import CliRunner
from google.protobuf import text_format
from tokenizers import Tokenizer
from tritonclient.grpc import model_config_pb2

from virnucpro_triton import repository as repo
from virnucpro_triton.backends.factory import embedding_backend
from virnucpro_triton.backends.onnx_backend import OnnxBackend
from virnucpro_triton.backends.torch_backend import TorchBackend
from virnucpro_triton.cli import main
from virnucpro_triton.commands.embed import embed
from virnucpro_triton.commands.predict import predict
from virnucpro_triton.export import VerificationError, export_repository
from virnucpro_triton.export.formats import onnx_format
from virnucpro_triton.export.tiny import tiny_models
from virnucpro_triton.models.esm2 import PAD_IDX, encode_protein, pad_batch
from virnucpro_triton.results.outputs import PREDICTIONS
from virnucpro_triton.sequence_embedders import ProteinEmbedder
from virnucpro_triton.server import EmbeddedServer

TOLERANCE = 1e-4
DNA = ["ACGTACGGTTAGC" * k for k in (1, 2, 9, 30)] + ["AC", "GATTACANNNRY"]
PROTEINS = ["MKV", "A", "MKTAYIAKQRQISFVKSHFSRQLEERLG", "W" * 166, "MXBZ"]
GRAPHS = ["dnabert_s_onnx", "esm2_onnx", "classifier_300_onnx", "classifier_500_onnx"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The tiny models of `export --tiny` (same seed), kept for the torch side of comparisons."""
    return tiny_models(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="module")
def onnx_repository(tmp_path_factory) -> Path:
    repository = tmp_path_factory.mktemp("onnx") / "repository"
    export_repository(repository, tiny=True, format="onnx", report=lambda _: None)
    return repository


def session(repository: Path, name: str) -> onnxruntime.InferenceSession:
    path = repository / name / "1" / repo.ONNX_MODEL
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).max())


def test_dnabert_s_graph_equals_torch_on_a_padded_batch(onnx_repository, models):
    dnabert, tokenizer_json, _, _ = models
    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    tokens = [e.ids for e in tokenizer.encode_batch(DNA)]
    pad = tokenizer.token_to_id("[PAD]")
    ids = pad_batch(tokens, pad)  # lengths differ, and exceed the traced example's
    got = session(onnx_repository, "dnabert_s_onnx").run(
        ["EMBEDDING"], {"INPUT_IDS": ids.numpy(), "ATTENTION_MASK": ids.ne(pad).long().numpy()}
    )[0]
    with torch.inference_mode():
        expected = np.stack(
            [dnabert.embed(t := torch.tensor([row]), torch.ones_like(t))[0] for row in tokens]
        )
    assert max_abs(got, expected) <= TOLERANCE


def test_esm2_graph_equals_torch_on_a_padded_batch(onnx_repository, models):
    _, _, esm2, _ = models
    tokens = [encode_protein(p) for p in PROTEINS]
    got = session(onnx_repository, "esm2_onnx").run(
        ["EMBEDDING"], {"INPUT_IDS": pad_batch(tokens, PAD_IDX).numpy()}
    )[0]
    with torch.inference_mode():
        expected = np.stack([esm2.embed(torch.tensor([row]))[0] for row in tokens])
    assert max_abs(got, expected) <= TOLERANCE


@pytest.mark.parametrize("size", repo.CHUNK_SIZES)
def test_classifier_graph_equals_torch(onnx_repository, models, size):
    classifier = models[3][size]
    features = np.random.default_rng(size).normal(size=(37, 64)).astype(np.float32)
    got = session(onnx_repository, f"classifier_{size}_onnx").run(
        ["PROBABILITIES"], {"FEATURES": features}
    )[0]
    with torch.inference_mode():
        expected = classifier(torch.from_numpy(features)).numpy()
    assert max_abs(got, expected) <= TOLERANCE


def graph_dims(values) -> dict[str, list[str | int]]:
    return {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values
    }


def test_graphs_have_opset_17_and_dynamic_batch_and_length(onnx_repository):
    expected = {
        "dnabert_s_onnx": (
            {"INPUT_IDS": ["batch", "length"], "ATTENTION_MASK": ["batch", "length"]},
            {"EMBEDDING": ["batch", 32]},
        ),
        "esm2_onnx": ({"INPUT_IDS": ["batch", "length"]}, {"EMBEDDING": ["batch", 32]}),
        "classifier_300_onnx": ({"FEATURES": ["batch", 64]}, {"PROBABILITIES": ["batch", 2]}),
    }
    for name, (inputs, outputs) in expected.items():
        model = onnx.load(str(onnx_repository / name / "1" / repo.ONNX_MODEL))
        assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
        assert graph_dims(model.graph.input) == inputs, name
        assert graph_dims(model.graph.output) == outputs, name


def read_config(entry: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse((entry / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def test_entries_are_onnxruntime_graphs_behind_weightless_python_entries(onnx_repository):
    for name in GRAPHS:
        config = read_config(onnx_repository / name)
        assert (config.name, config.platform, config.backend) == (name, "onnxruntime_onnx", "")
        assert config.HasField("dynamic_batching")
        assert sorted(p.name for p in (onnx_repository / name / "1").iterdir()) == ["model.onnx"]
    ids = read_config(onnx_repository / "dnabert_s_onnx").input
    assert [(t.name, t.data_type, list(t.dims)) for t in ids] == [
        ("INPUT_IDS", model_config_pb2.TYPE_INT64, [-1]),
        ("ATTENTION_MASK", model_config_pb2.TYPE_INT64, [-1]),
    ]
    for name in [repo.DNABERT_S, repo.ESM2, "classifier_300", "classifier_500"]:
        version = onnx_repository / name / "1"
        assert read_config(onnx_repository / name).backend == "python"
        assert repo.read_architecture(version)["runtime"] == repo.ONNX
        assert not (version / repo.WEIGHTS).exists()
        with pytest.raises(ValueError, match="ONNX entry"):
            repo.load_model(version)
    assert (onnx_repository / repo.DNABERT_S / "1" / repo.TOKENIZER).is_file()


def test_the_backend_factory_runs_an_onnx_entry_through_its_graph(onnx_repository, models):
    cpu, asked = torch.device("cpu"), []

    def run_graph(name: str, output: str):
        asked.append((name, output))
        return onnx_format.onnxruntime_run(onnx_repository / name / "1" / repo.ONNX_MODEL, output)

    version = onnx_repository / repo.ESM2 / "1"
    backend = embedding_backend(version, cpu, 32, run_graph)
    assert isinstance(backend, OnnxBackend) and asked == [("esm2_onnx", repo.EMBEDDING.name)]
    served = ProteinEmbedder(backend)(PROTEINS)
    in_torch = ProteinEmbedder(TorchBackend(models[2].float(), cpu))(PROTEINS)
    assert max_abs(served, in_torch) <= TOLERANCE
    with pytest.raises(ValueError, match="the model runs in the ONNX entry esm2_onnx, not here"):
        embedding_backend(version, cpu, 32)


def test_large_weights_go_to_one_external_data_file(models, tmp_path):
    classifier = models[3][300]
    # Threshold forced to 0 bytes: the path a > 2 GB model (ESM-2 650M, 3B) takes.
    check = onnx_format.OnnxFormat(external_data_bytes=0).classifier(
        tmp_path, 300, classifier, repo.TINY_SOURCE
    )
    version = tmp_path / "classifier_300_onnx" / "1"
    assert sorted(p.name for p in version.iterdir()) == [repo.ONNX_MODEL, repo.ONNX_DATA]
    model = onnx.load(str(version / repo.ONNX_MODEL), load_external_data=False)
    location = {t.name: t.data_location for t in model.graph.initializer}
    assert location["hidden_layer.weight"] == onnx.TensorProto.EXTERNAL  # small ones stay inline
    assert check.passed() and check.max_abs <= TOLERANCE
    features = np.random.default_rng(1).normal(size=(5, 64)).astype(np.float32)
    got = session(tmp_path, "classifier_300_onnx").run(None, {"FEATURES": features})[0]
    with torch.inference_mode():
        assert max_abs(got, classifier(torch.from_numpy(features)).numpy()) <= TOLERANCE


def test_a_graph_that_does_not_match_torch_is_refused(models, tmp_path, monkeypatch):
    export_graph = onnx_format.export_graph

    def export_then_corrupt(*args, **kwargs) -> Path:
        path = export_graph(*args, **kwargs)
        model = onnx.load(str(path))
        weight = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
        array = onnx.numpy_helper.to_array(weight) + 1e-3
        weight.CopyFrom(onnx.numpy_helper.from_array(array, weight.name))
        onnx.save(model, str(path))
        return path

    monkeypatch.setattr(onnx_format, "export_graph", export_then_corrupt)
    with pytest.raises(VerificationError, match=r"refused to write esm2_onnx \(fp32\): max abs"):
        onnx_format.OnnxFormat().esm2(tmp_path, models[2], repo.TINY_SOURCE)
    assert list(tmp_path.iterdir()) == []  # the staging directory is gone, nothing was written


def test_cli_refuses_half_precision_onnx(tmp_path):
    result = CliRunner().invoke(
        main, ["export", "--tiny", "--format", "onnx", "--dtype", "bf16", "--out", str(tmp_path)]
    )
    assert result.exit_code == 1 and "fp32" in result.output
    assert list(tmp_path.iterdir()) == []


def test_torch_export_removes_a_stale_onnx_entry(tmp_path):
    repository = tmp_path / "repository"
    export_repository(repository, tiny=True, format="onnx", report=lambda _: None)
    export_repository(repository, tiny=True, report=lambda _: None)
    assert not any(p.name.endswith("_onnx") for p in repository.iterdir())
    assert repo.read_architecture(repository / repo.ESM2 / "1")["runtime"] == repo.TORCH


# Test-only stand-in for Triton's onnxruntime backend, in the Python backend.
STAND_IN = """
import json
from pathlib import Path

import onnxruntime
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.inputs = [t["name"] for t in config["input"]]
        self.output = config["output"][0]["name"]

    def execute(self, requests):
        responses = []
        for request in requests:
            get = pb_utils.get_input_tensor_by_name
            feed = {n: get(request, n).as_numpy() for n in self.inputs}
            result = self.session.run([self.output], feed)[0]
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(self.output, result)]))
        return responses
"""


def test_served_onnx_format_answers_like_the_torch_format(
    onnx_repository, server, mixed_fasta, tmp_path
):
    """Strings in through the Python entries, BLS to the graphs, same answers as torch."""
    repository = shutil.copytree(onnx_repository, tmp_path / "repository")
    for name in GRAPHS:
        config = read_config(repository / name)
        config.ClearField("platform")
        config.backend = "python"
        (repository / name / "config.pbtxt").write_text(text_format.MessageToString(config))
        (repository / name / "1" / repo.MODEL_PY).write_text(STAND_IN)
    fasta = tmp_path / "dna.fa"
    fasta.write_text("".join(f">d{i}\n{s}\n" for i, s in enumerate(DNA)))
    with EmbeddedServer(repository, log_path=tmp_path / "onnx-server.log") as onnx_server:
        for url, out in [(onnx_server.grpc_url, "onnx"), (server.grpc_url, "torch")]:
            predict(mixed_fasta, 300, tmp_path / out, url, progress=False)
            embed(fasta, repo.DNABERT_S, tmp_path / out / "dna.npy", url)
        log = onnx_server.log_text()
    assert "loaded dnabert_s (dnabert_s fp32 onnx)" in log
    torch_rows = (tmp_path / "torch" / PREDICTIONS).read_text().splitlines()
    onnx_rows = (tmp_path / "onnx" / PREDICTIONS).read_text().splitlines()
    assert len(onnx_rows) == len(torch_rows) > 1
    for a, b in zip(onnx_rows[1:], torch_rows[1:], strict=True):
        (id_a, label_a, *p_a), (id_b, label_b, *p_b) = a.split("\t"), b.split("\t")
        assert (id_a, label_a) == (id_b, label_b)
        assert max_abs(np.array(p_a, float), np.array(p_b, float)) <= TOLERANCE
    onnx_dna, torch_dna = (np.load(tmp_path / out / "dna.npy") for out in ["onnx", "torch"])
    assert max_abs(onnx_dna, torch_dna) <= TOLERANCE
