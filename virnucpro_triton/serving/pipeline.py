"""Served `virnucpro`: DNA chunks in, six frames' class probabilities out.

Translation, the frame filter and the calls to the embedders and the classifier run here
(BLS), so one request from any Triton client runs the whole VirNucPro method. Each request's
frames go to the embedders in calls of their own.

The entries it calls, and the max_batch_size of each, come from its config's `calls` parameter,
which export fills from their configs: BLS can run another model but not read its config, and
parsing their config.pbtxt here would cost each stub the protobuf import. Its classifiers are
the chunk sizes it serves.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from virnucpro_triton.alphabet import first_invalid
from virnucpro_triton.repository import (
    CALLS,
    CONCURRENT_KEY,
    DNABERT_S,
    ESM2,
    NUM_FRAMES,
    PIPELINE,
    chunk_size_of,
    classifier_name,
    spec_of,
)
from virnucpro_triton.sequence import Frame, six_frames
from virnucpro_triton.serving.common import (
    BadRequest,
    EntryConfig,
    answer,
    bls_output,
    bls_request,
    input_array,
    input_strings,
    log_loaded,
)


@dataclass(frozen=True)
class _Entry:
    """Another served entry, one input and one output, called in pieces it accepts."""

    name: str
    input: str
    output: str
    max_batch_size: int

    @classmethod
    def of(cls, name: str, calls: dict[str, int]) -> _Entry:
        if name not in calls:
            raise ValueError(
                f"{PIPELINE}: its config's {CALLS} parameter names no {name}: export again"
            )
        spec = spec_of(name)
        return cls(name, spec.inputs[0].name, spec.outputs[0].name, int(calls[name]))

    async def __call__(self, rows: np.ndarray) -> np.ndarray:
        """Run `rows` through the entry, in pieces it accepts, all in flight at once."""
        step = self.max_batch_size
        pieces = [rows[i : i + step] for i in range(0, len(rows), step)]
        responses = await asyncio.gather(
            *(
                bls_request(self.name, {self.input: piece}, self.output).async_exec()
                for piece in pieces
            )
        )
        return np.concatenate([bls_output(self.name, r, self.output) for r in responses])


class PipelineModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = EntryConfig(args)
        self.dna, self.chunk_size = config.names("input", 2)
        self.probabilities, self.kept = config.names("output", 2)
        self.concurrent_requests = config.limit(CONCURRENT_KEY)
        calls = json.loads(config.parameter(CALLS))
        self.dnabert_s = _Entry.of(DNABERT_S, calls)
        self.esm2 = _Entry.of(ESM2, calls)
        sizes = sorted(size for name in calls if (size := chunk_size_of(name)) is not None)
        self.classifiers = {size: _Entry.of(classifier_name(size), calls) for size in sizes}
        log_loaded(args, "pipeline")

    async def execute(self, requests: list[Any]) -> list[Any]:
        # Requests run side by side, each with calls of its own: the embedders embed each call
        # alone, so results do not depend on what else is in flight, and a failure stays with
        # the request that met it. A bounded number at once keeps the calls of every pipeline
        # instance within the other entries' queues (spec.MAX_QUEUE_SIZE).
        limit = asyncio.Semaphore(self.concurrent_requests)

        async def run(request: Any) -> dict[str, np.ndarray]:
            async with limit:
                return await self._run(request)

        results = await asyncio.gather(*map(run, requests), return_exceptions=True)
        return [answer(result) for result in results]

    def _chunks_of(self, request: Any) -> tuple[list[str], np.ndarray]:
        chunks = input_strings(request, self.dna)
        sizes = input_array(request, self.chunk_size).reshape(-1).astype(np.int64)
        if len(sizes) != len(chunks):  # Triton checks this too; a cheap guard against relying on it
            raise BadRequest(f"{self.dna} and {self.chunk_size} must have the same number of rows")
        for row, (chunk, size) in enumerate(zip(chunks, sizes)):
            # Checked first: sizes bound chunk lengths, and so the work and the embedders' inputs.
            if size not in self.classifiers:
                raise BadRequest(
                    f"{self.chunk_size} row {row}: there is no {classifier_name(size)}; "
                    f"chunk sizes are {', '.join(map(str, self.classifiers))}"
                )
            if not chunk:
                raise BadRequest(f"{self.dna} row {row}: empty chunk")
            bad = first_invalid(chunk)
            if bad:
                raise BadRequest(f"{self.dna} row {row}: {bad.group()!r} is not a nucleotide code")
            if len(chunk) > size:
                raise BadRequest(
                    f"{self.dna} row {row}: chunk of {len(chunk)} bases for chunk size {size}"
                )
        return chunks, sizes

    async def _run(self, request: Any) -> dict[str, np.ndarray]:
        chunks, sizes = self._chunks_of(request)
        probabilities = np.full((len(chunks), NUM_FRAMES, 2), np.nan, np.float32)
        kept = np.zeros((len(chunks), NUM_FRAMES), bool)
        rows: list[int] = []
        columns: list[int] = []
        frames: list[Frame] = []
        for row, chunk in enumerate(chunks):
            for column, frame in enumerate(six_frames(chunk)):
                if frame is not None:
                    rows.append(row)
                    columns.append(column)
                    frames.append(frame)
        if frames:
            probabilities[rows, columns] = await self._classify(frames, sizes[rows])
            kept[rows, columns] = True
        return {self.probabilities: probabilities, self.kept: kept}

    async def _classify(self, frames: list[Frame], sizes: np.ndarray) -> np.ndarray:
        """P(others), P(virus) of each frame, by the classifier of its chunk size."""
        dna_features, protein_features = await asyncio.gather(
            self.dnabert_s(_text([f.nucleotide for f in frames])),
            self.esm2(_text([f.protein for f in frames])),
        )
        features = np.concatenate([dna_features, protein_features], axis=1)
        groups = {int(s): np.flatnonzero(sizes == s) for s in np.unique(sizes)}
        results = await asyncio.gather(
            *(self.classifiers[s](features[rows]) for s, rows in groups.items())
        )
        probabilities = np.empty((len(frames), 2), np.float32)
        for rows, result in zip(groups.values(), results):
            probabilities[rows] = result
        return probabilities


def _text(strings: list[str]) -> np.ndarray:
    return np.array(strings, dtype=object).reshape(-1, 1)
