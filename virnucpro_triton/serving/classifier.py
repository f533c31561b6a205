"""Served `classifier_N` (one per chunk size): VirNucPro's MLP, features in, P(class) out.

In an ONNX-format repository the MLP runs in the `classifier_N_onnx` entry, called through BLS.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from virnucpro_triton.repository import (
    ONNX,
    load_model,
    onnx_name,
    read_architecture,
    runtime_of,
    spec_of,
)
from virnucpro_triton.serving.common import (
    BadRequest,
    EntryConfig,
    answer,
    bls_run,
    device_of,
    input_array,
    log_loaded,
    try_each,
    version_dir,
)


def _torch_classifier(args: dict[str, Any]) -> Callable[[np.ndarray], np.ndarray]:
    device = device_of(args)
    model, _ = load_model(version_dir(args), device)
    dtype = next(model.parameters()).dtype

    @torch.inference_mode()
    def classify(features: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(features).to(device, dtype)).float().cpu().numpy()

    return classify


def _onnx_classifier(args: dict[str, Any]) -> Callable[[np.ndarray], np.ndarray]:
    graph = spec_of(onnx_name(args["model_name"]))
    run = bls_run(graph.name, graph.outputs[0].name)
    return lambda features: run({graph.inputs[0].name: features})


class ClassifierModel:
    """Rows of concatenated DNABERT-S + ESM-2 features -> [P(others), P(virus)]."""

    def initialize(self, args: dict[str, Any]) -> None:
        config = EntryConfig(args)
        (self.input,) = config.names("input", 1)
        (self.output,) = config.names("output", 1)
        architecture = read_architecture(version_dir(args))
        runtime = runtime_of(architecture)
        self.classify = (_onnx_classifier if runtime == ONNX else _torch_classifier)(args)
        log_loaded(args, f"classifier {architecture['dtype']} {runtime}")

    def _classify(self, request: Any) -> dict[str, np.ndarray]:
        features = input_array(request, self.input)
        if not np.isfinite(features).all():
            raise BadRequest(f"{self.input} holds NaN or infinite values")
        return {self.output: self.classify(features)}

    def execute(self, requests: list[Any]) -> list[Any]:
        return [answer(result) for result in try_each(requests, self._classify)]
