"""Served `dnabert_s` and `esm2`: a batch of sequences (BYTES) in, pooled embeddings out.

In an ONNX-format repository the entry holds no weights: it tokenizes and batches as always
and sends the padded id batches to its `*_onnx` compute entry through BLS.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from virnucpro_triton.alphabet import DNA, PROTEIN
from virnucpro_triton.embedders import CHECKS, DnaEmbedder, GraphEmbedding, ProteinEmbedder
from virnucpro_triton.repository import (
    DNABERT_S,
    ESM2,
    FP8_NONE,
    MAX_LENGTH,
    MAX_ROWS_KEY,
    ONNX,
    TOKEN_BUDGET_KEY,
    TOKENIZER,
    apply_fp8,
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
    input_strings,
    log_loaded,
    try_each,
    version_dir,
)
from virnucpro_triton.serving.embedding_cache import CacheMetrics, EmbeddingCache, cache_bytes_of


def _onnx_graph(name: str, dim: int) -> GraphEmbedding:
    """The model of entry `name` as its ONNX compute entry, called through BLS."""
    graph = spec_of(onnx_name(name))
    run = bls_run(graph.name, graph.outputs[0].name)
    return GraphEmbedding(run, [t.name for t in graph.inputs], dim)


class EmbeddingModel:
    """Loads the entry's weights once; each execute() embeds all its requests together."""

    def initialize(self, args: dict[str, Any]) -> None:
        directory = version_dir(args)
        config = EntryConfig(args)
        (self.input,) = config.names("input", 1)
        (self.output,) = config.names("output", 1)
        architecture = read_architecture(directory)
        kind, runtime = architecture["kind"], runtime_of(architecture)
        device = device_of(args)
        if runtime == ONNX:
            model = _onnx_graph(args["model_name"], config.width())
            device = torch.device("cpu")  # ids leave as numpy; the ONNX entry has its own device
        else:
            model, _ = load_model(directory, device)
        fp8 = config.parameter("fp8", FP8_NONE)
        if fp8 != FP8_NONE and (kind != ESM2 or runtime == ONNX):
            raise ValueError(f"parameter fp8 needs a torch-format esm2 entry, not {kind} {runtime}")
        fp8_done = apply_fp8(model, fp8, device) if fp8 != FP8_NONE else ""
        # Compiled on a GPU, where fusion pays; warmed up here so that cold start, not the
        # first requests, pays for compilation.
        compiled = device.type == "cuda" and runtime != ONNX
        batches = {
            "token_budget": config.limit(TOKEN_BUDGET_KEY),
            "max_rows": config.limit(MAX_ROWS_KEY),
            "compiled": compiled,
        }
        if kind == DNABERT_S:
            self.embed = DnaEmbedder(model, directory / TOKENIZER, device, **batches)
            alphabet = DNA
        else:
            self.embed = ProteinEmbedder(model, device, **batches)
            alphabet = PROTEIN
        self.check = partial(CHECKS[alphabet], max_length=config.limit(MAX_LENGTH))
        if compiled:
            self.embed.warm_up()
        self.cache = EmbeddingCache(cache_bytes_of(config.config))
        self.metrics = CacheMetrics(args["model_name"]) if self.cache.max_bytes else None
        notes = [kind, architecture["dtype"], runtime] + ["compiled"] * compiled + [fp8_done]
        log_loaded(args, " ".join(filter(None, notes)))

    def _sequences(self, request: Any) -> list[str]:
        batch = input_strings(request, self.input)
        for row, sequence in enumerate(batch):
            problem = self.check(sequence)
            if problem:
                raise BadRequest(f"{self.input} row {row}: {problem}")
        return batch

    def execute(self, requests: list[Any]) -> list[Any]:
        # Rows of all valid requests are embedded together (length-bucketed across requests);
        # padding is masked, so a row's result moves at most in its last float32 bits.
        parsed = try_each(requests, self._sequences)
        valid = [batch for batch in parsed if not isinstance(batch, Exception)]
        try:
            embeddings = self.cache.embed([s for batch in valid for s in batch], self.embed)
        except Exception as error:  # a compute failure fails the requests that shared it
            return [answer(b if isinstance(b, Exception) else error) for b in parsed]
        results, start = [], 0
        for batch in parsed:
            if isinstance(batch, Exception):
                results.append(answer(batch))
            else:
                results.append(answer({self.output: embeddings[start : start + len(batch)]}))
                start += len(batch)
        if self.metrics:
            self.metrics.report(self.cache)
        return results
