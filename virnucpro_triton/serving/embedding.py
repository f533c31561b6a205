"""Served `dnabert_s` and `esm2`: a batch of sequences (BYTES) in, pooled embeddings out.

In an ONNX-format repository the entry holds no weights: it tokenizes and batches as always
and sends the padded id batches to its `*_onnx` compute entry through BLS.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from virnucpro_triton.embedders import (
    CHECKS,
    DnaEmbedder,
    GraphEmbedding,
    GraphRun,
    ProteinEmbedder,
)
from virnucpro_triton.repository import (
    DNABERT_S,
    ONNX,
    TOKENIZER,
    load_model,
    onnx_embedder_tensors,
    onnx_name,
    read_architecture,
    runtime_of,
)
from virnucpro_triton.serving.common import (
    BadRequest,
    device_of,
    error_response,
    input_strings,
    log_loaded,
    version_dir,
)


def bls_run(model_name: str, output_name: str) -> GraphRun:
    """Named input arrays -> one output array of another served model (blocking BLS call)."""

    def run(inputs: dict[str, np.ndarray]) -> np.ndarray:
        request = pb_utils.InferenceRequest(
            model_name=model_name,
            inputs=[pb_utils.Tensor(name, array) for name, array in inputs.items()],
            requested_output_names=[output_name],
            # A GPU onnxruntime instance may answer in GPU memory, which as_numpy() cannot read.
            preferred_memory=pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0),
        )
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"{model_name}: {response.error().message()}")
        return pb_utils.get_output_tensor_by_name(response, output_name).as_numpy()

    return run


def _onnx_graph(name: str, kind: str, dim: int) -> GraphEmbedding:
    """The model of entry `name` as its ONNX compute entry, called through BLS."""
    inputs, outputs = onnx_embedder_tensors(kind, dim)
    return GraphEmbedding(bls_run(onnx_name(name), outputs[0].name), [t.name for t in inputs], dim)


class EmbeddingModel:
    """Loads the entry's weights once; each execute() embeds all its requests together."""

    def initialize(self, args: dict[str, Any]) -> None:
        directory = version_dir(args)
        config = json.loads(args["model_config"])
        architecture = read_architecture(directory)
        kind, runtime = architecture["kind"], runtime_of(architecture)
        device = device_of(args)
        if runtime == ONNX:
            model = _onnx_graph(args["model_name"], kind, config["output"][0]["dims"][0])
            device = torch.device("cpu")  # ids leave as numpy; the ONNX entry has its own device
        else:
            model, _ = load_model(directory)
        if kind == DNABERT_S:
            self.embed = DnaEmbedder(model, directory / TOKENIZER, device)
            self.check = CHECKS["dna"]
        else:
            self.embed = ProteinEmbedder(model, device)
            self.check = CHECKS["protein"]
        self.max_batch = config["max_batch_size"]
        log_loaded(args, f"{kind} {architecture['dtype']} {runtime}")

    def execute(self, requests: list[Any]) -> list[Any]:
        sequences: list[str] = []
        spans: list[tuple[int, int] | str] = []  # each request's rows, or why it was refused
        for request in requests:
            try:
                batch = input_strings(request, "SEQUENCE")
                for row, sequence in enumerate(batch):
                    problem = self.check(sequence)
                    if problem:
                        raise BadRequest(f"SEQUENCE row {row}: {problem}")
            except BadRequest as error:
                spans.append(str(error))
                continue
            spans.append((len(sequences), len(sequences) + len(batch)))
            sequences.extend(batch)
        embeddings = self.embed(sequences)
        return [
            error_response(span)
            if isinstance(span, str)
            else pb_utils.InferenceResponse(
                [pb_utils.Tensor("EMBEDDING", embeddings[slice(*span)])]
            )
            for span in spans
        ]
