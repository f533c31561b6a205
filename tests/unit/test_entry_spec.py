"""One spec per entry: configs and model.py are generated from it, the served models read their
names and limits back from the config they were loaded with, and adding a chunk size is one
argument (a third classifier served end to end)."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import json_format, text_format
from reference import in_process, read_rows
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from virnucpro_triton import repository as repo
from virnucpro_triton.client.predict import predict
from virnucpro_triton.export import export_repository
from virnucpro_triton.export.repository_writer import export_pipeline
from virnucpro_triton.server import EmbeddedServer, backend_directory

PACKAGE = Path(repo.__file__).parent.parent
TENSOR_NAMES = {
    t.name for spec in repo.entry_specs().values() for t in (*spec.inputs, *spec.outputs)
}
# Stop-free in all six frames (GCT.. forward, AGC.. reverse): every chunk has six frames.
STOP_FREE = "GCT" * 334
THIRD = 400


def string_constants(path: Path) -> set[str]:
    return {
        node.value
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }


def test_no_tensor_name_is_spelled_outside_the_spec():
    spelled = {
        str(path.relative_to(PACKAGE)): found
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "spec.py" and (found := string_constants(path) & TENSOR_NAMES)
    }
    assert spelled == {}


def test_models_import_nothing_above_them():
    for path in (PACKAGE / "models").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module.startswith("virnucpro_triton"):
                assert node.module.startswith("virnucpro_triton.models"), (path, node.module)


def test_every_entry_config_and_model_py_comes_from_its_spec():
    widths = {repo.WIDTH: 32, repo.FEATURE_WIDTH: 64}
    for name, spec in repo.entry_specs((300, THIRD, 500)).items():
        config = repo.entry_config(spec, widths)
        assert config.name == name and config.max_batch_size == spec.max_batch_size
        assert [t.name for t in config.input] == [t.name for t in spec.inputs]
        assert [t.name for t in config.output] == [t.name for t in spec.outputs]
        bounded = config.dynamic_batching.default_queue_policy.max_queue_size
        assert bounded == (spec.max_queue_size or 0)
        if spec.model:
            assert config.backend == "python"
            assert {k: v.string_value for k, v in config.parameters.items()} == spec.parameters
            module, cls = spec.model.rsplit(".", 1)
            assert f"from {module} import {cls} as TritonPythonModel" in repo.model_py(spec)
        else:
            assert config.platform == "onnxruntime_onnx"
    assert repo.spec_of(repo.classifier_name(THIRD)).name == "classifier_400"


def loaded_pipeline(config: model_config_pb2.ModelConfig, monkeypatch):
    """The served pipeline's initialize() on `config`, as Triton passes it (JSON)."""
    monkeypatch.syspath_prepend(str(backend_directory() / "python"))
    from virnucpro_triton.serving import pipeline

    monkeypatch.setattr(pipeline, "log_loaded", lambda args, what: None)  # the stub's logger
    model = pipeline.PipelineModel()
    as_json = json_format.MessageToJson(config, preserving_proto_field_name=True)
    model.initialize({"model_name": config.name, "model_config": as_json})
    return model


def test_a_pipeline_exported_before_its_calls_were_recorded_calls_as_they_were(
    monkeypatch, tmp_path
):
    config = repo.entry_config(repo.spec_of(repo.PIPELINE))  # export adds the calls
    del config.parameters[repo.CONCURRENT_KEY]
    model = loaded_pipeline(config, monkeypatch)
    assert list(model.classifiers) == [300, 500]
    called = [model.dnabert_s, model.esm2, *model.classifiers.values()]
    assert {entry.max_batch_size for entry in called} == {1024}
    assert model.concurrent_requests == repo.CONCURRENT_REQUESTS
    assert (model.dna, model.chunk_size) == ("DNA", "CHUNK_SIZE")


@pytest.fixture(scope="module")
def third_chunk_size(tmp_path_factory):
    """A tiny repository with classifiers for 300, 400 and 500 bp, whose dnabert_s takes 4 rows
    a request and whose esm2 takes proteins of 150 residues at most (set in their configs)."""
    repository = tmp_path_factory.mktemp("third") / "repository"
    export_repository(repository, tiny=True, chunk_sizes=(300, THIRD, 500), report=lambda _: None)
    for name, change in [
        (repo.DNABERT_S, lambda c: setattr(c, "max_batch_size", 4)),
        (repo.ESM2, lambda c: c.parameters[repo.MAX_LENGTH].__setattr__("string_value", "150")),
    ]:
        path = repository / name / "config.pbtxt"
        config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        change(config)
        path.write_text(text_format.MessageToString(config))
    export_pipeline(repository)  # as export does: told the entries' limits as they are now
    log = repository.parent / "tritonserver.log"
    with EmbeddedServer(repository, log_path=log) as running:
        yield repository, running


def inference_count(client, name: str) -> int:
    stats = client.get_inference_statistics(name, as_json=True)["model_stats"][0]
    return int(stats["inference_stats"]["success"].get("count", 0))


def test_a_third_chunk_size_is_served_through_the_pipeline(third_chunk_size, tmp_path):
    repository, server = third_chunk_size
    fasta_text = f">stop_free three 400-bp chunks\n{STOP_FREE}\n"
    fasta = tmp_path / "in.fa"
    fasta.write_text(fasta_text)
    # 18 frames in one pipeline request: the pipeline splits them to dnabert_s's 4 rows.
    predict(fasta, THIRD, tmp_path / "out", server.grpc_url, progress=False)
    rows = read_rows(tmp_path / "out")
    expected = in_process(repository, fasta_text, THIRD)
    chunks = math.ceil(len(STOP_FREE) / THIRD)
    assert sorted(rows) == sorted(expected) and len(rows) == 6 * chunks
    for frame_id, (_, p_others, p_virus) in rows.items():
        assert np.allclose([p_others, p_virus], expected[frame_id], atol=1e-5), frame_id
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        assert inference_count(client, "classifier_400") > 0
        assert (
            inference_count(client, "classifier_300")
            == inference_count(client, "classifier_500")
            == 0
        )
        assert inference_count(client, repo.DNABERT_S) >= math.ceil(6 * chunks / 4)


def test_served_limits_are_those_of_the_loaded_config(third_chunk_size):
    _, server = third_chunk_size
    with grpcclient.InferenceServerClient(server.grpc_url) as client:

        def embed(name: str, sequences: list[str]):
            sequence = grpcclient.InferInput(repo.SEQUENCE.name, [len(sequences), 1], "BYTES")
            sequence.set_data_from_numpy(np.array(sequences, dtype=object).reshape(-1, 1))
            return client.infer(name, [sequence])

        embed(repo.ESM2, ["M" * 150])
        with pytest.raises(InferenceServerException, match="longer than 150"):
            embed(repo.ESM2, ["M" * 151])
        with pytest.raises(InferenceServerException, match="batch-size must be <= 4"):
            embed(repo.DNABERT_S, ["ACGT"] * 5)
        dna = grpcclient.InferInput(repo.DNA_CHUNKS.name, [1, 1], "BYTES")
        dna.set_data_from_numpy(np.array([STOP_FREE[:THIRD]], dtype=object).reshape(1, 1))
        size = grpcclient.InferInput(repo.CHUNK_SIZE.name, [1, 1], "INT32")
        size.set_data_from_numpy(np.array([[450]], np.int32))
        with pytest.raises(InferenceServerException, match="chunk sizes are 300, 400, 500"):
            client.infer(repo.PIPELINE, [dna, size])
