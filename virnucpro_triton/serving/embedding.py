"""Served `dnabert_s` and `esm2`: a batch of sequences (BYTES) in, pooled embeddings out."""

from __future__ import annotations

import json
from typing import Any

import triton_python_backend_utils as pb_utils

from virnucpro_triton.embedders import CHECKS, DnaEmbedder, ProteinEmbedder
from virnucpro_triton.repository import DNABERT_S, TOKENIZER, load_model
from virnucpro_triton.serving.common import (
    BadRequest,
    device_of,
    error_response,
    input_strings,
    log_loaded,
    version_dir,
)


class EmbeddingModel:
    """Loads the entry's weights once; each execute() embeds all its requests together."""

    def initialize(self, args: dict[str, Any]) -> None:
        directory = version_dir(args)
        model, architecture = load_model(directory)
        device = device_of(args)
        if architecture["kind"] == DNABERT_S:
            self.embed = DnaEmbedder(model, directory / TOKENIZER, device)
            self.check = CHECKS["dna"]
        else:
            self.embed = ProteinEmbedder(model, device)
            self.check = CHECKS["protein"]
        self.max_batch = json.loads(args["model_config"])["max_batch_size"]
        log_loaded(args, f"{architecture['kind']} {architecture['dtype']}")

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
