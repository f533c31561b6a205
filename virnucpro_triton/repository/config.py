"""An entry's spec (spec.py) -> its config.pbtxt (a ModelConfig) and its model.py."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from virnucpro_triton.repository.spec import EntrySpec

if TYPE_CHECKING:
    # Imported where configs are made: the client and the pipeline's stubs never pay for it.
    from tritonclient.grpc import model_config_pb2


def entry_config(
    spec: EntrySpec,
    widths: Mapping[str, int] | None = None,
    parameters: Mapping[str, str] | None = None,
) -> model_config_pb2.ModelConfig:
    """The ModelConfig of `spec`, validated by the protobuf schema as it is built.

    `widths` gives the sizes the exported model decides (spec.WIDTH, spec.FEATURE_WIDTH);
    `parameters` overrides or adds to the spec's (the esm2 entry's `fp8` setting, say).
    """
    from google.protobuf import json_format
    from tritonclient.grpc import model_config_pb2

    fields = {
        "name": spec.name,
        "max_batch_size": spec.max_batch_size,
        "input": [t.as_dict(widths) for t in spec.inputs],
        "output": [t.as_dict(widths) for t in spec.outputs],
        "dynamic_batching": {"max_queue_delay_microseconds": spec.queue_delay_us},
    }
    if spec.model:
        fields["backend"] = "python"
        merged = {**spec.parameters, **(parameters or {})}
        fields["parameters"] = {k: {"string_value": v} for k, v in merged.items()}
    else:
        fields["platform"] = "onnxruntime_onnx"
    config = json_format.ParseDict(fields, model_config_pb2.ModelConfig())
    if spec.instances is not None:
        config.instance_group.add(count=spec.instances)
    if spec.max_queue_size is not None:
        policy = config.dynamic_batching.default_queue_policy
        policy.max_queue_size = spec.max_queue_size
        policy.timeout_action = model_config_pb2.ModelQueuePolicy.REJECT
        policy.default_timeout_microseconds = spec.queue_timeout_us
    return config


def model_py(spec: EntrySpec) -> str:
    """A Python entry's 1/model.py: the serving class of its spec, under the name Triton loads."""
    module, cls = spec.model.rsplit(".", 1)
    return (
        f'"""Triton entry: see {module}."""\n\n'
        f"from {module} import {cls} as TritonPythonModel\n\n"
        '__all__ = ["TritonPythonModel"]\n'
    )
