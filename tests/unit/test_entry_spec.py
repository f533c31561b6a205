"""One spec per entry: configs and model.py are generated from it, the served models read their
names and limits back from the config they were loaded with, and adding a chunk size is one
argument (tests/server/test_entry_spec_served.py serves a third classifier end to end)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2

from virnucpro_triton import repository as repo
from virnucpro_triton.server import backend_directory

PACKAGE = Path(repo.__file__).parent.parent
TENSOR_NAMES = {
    t.name for spec in repo.entry_specs().values() for t in (*spec.inputs, *spec.outputs)
}
THIRD = 400  # a chunk size beside the two VirNucPro has


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


def test_a_pipeline_config_without_its_calls_is_refused_in_one_line(monkeypatch):
    config = repo.entry_config(repo.spec_of(repo.PIPELINE))  # export adds the calls
    with pytest.raises(ValueError) as refused:
        loaded_pipeline(config, monkeypatch)
    assert str(refused.value) == (
        "virnucpro: its config.pbtxt has no parameter calls: export the repository again"
    )
