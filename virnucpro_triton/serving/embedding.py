"""Served `dnabert_s` and `esm2`: a batch of sequences (BYTES) in, pooled embeddings out.

The model runs in the backend its architecture.json names (backends/factory.py): in torch, or,
in an ONNX-format repository, in its `*_onnx` compute entry, called through BLS.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from virnucpro_triton.alphabet import DNA, PROTEIN
from virnucpro_triton.backends.factory import embedding_backend
from virnucpro_triton.repository import (
    BATCH_INVARIANT,
    DNABERT_S,
    EMBEDDING_CACHE_PARAMETER,
    MAX_LENGTH,
    MAX_ROWS_KEY,
    TOKEN_BUDGET_KEY,
    TOKENIZER,
    read_architecture,
)
from virnucpro_triton.sequence_embedders import CHECKS, DnaEmbedder, ProteinEmbedder
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


class EmbeddingModel:
    """Loads the entry's weights once; each execute() embeds all its requests together."""

    def initialize(self, args: dict[str, Any]) -> None:
        directory = version_dir(args)
        config = EntryConfig(args)
        (self.input,) = config.names("input", 1)
        (self.output,) = config.names("output", 1)
        architecture = read_architecture(directory)
        batch_invariant = config.flag(BATCH_INVARIANT)
        # Compiled on a GPU, where fusion pays; warmed up here so that cold start, not the
        # first requests, pays for compilation.
        backend = embedding_backend(
            directory,
            device_of(args),
            config.width(),
            bls_run,
            fp8=config.parameter("fp8"),
            compiled_on_gpu=True,
            batch_invariant=batch_invariant,
        )
        batching = {
            "token_budget": config.limit(TOKEN_BUDGET_KEY),
            "max_rows": config.limit(MAX_ROWS_KEY),
            "batch_invariant": batch_invariant,
        }
        kind = architecture["kind"]
        if kind == DNABERT_S:
            self.embed = DnaEmbedder(backend, directory / TOKENIZER, **batching)
            alphabet = DNA
        else:
            self.embed = ProteinEmbedder(backend, **batching)
            alphabet = PROTEIN
        self.check = partial(CHECKS[alphabet], max_length=config.limit(MAX_LENGTH))
        if backend.compiled:
            self.embed.warm_up()
        self.cache = EmbeddingCache(cache_bytes_of(config.parameter(EMBEDDING_CACHE_PARAMETER)))
        self.metrics = CacheMetrics(args["model_name"]) if self.cache.max_bytes else None
        notes = [kind, architecture["dtype"], architecture["runtime"]]
        notes += ["compiled"] * backend.compiled + [backend.fp8]
        notes += ["batch-invariant"] * batch_invariant
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
        # padding is masked, so a row's result moves at most in its last float32 bits, and not
        # at all where the entry is batch-invariant.
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
