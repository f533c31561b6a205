"""Served `virnucpro`: DNA chunks in, six frames' class probabilities out.

Translation, the frame filter and the calls to the embedders and the classifier run here
(BLS), so one request from any Triton client runs the whole VirNucPro method. Each request's
frames go to the embedders in calls of their own.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from virnucpro_triton.alphabet import first_invalid
from virnucpro_triton.repository import (
    CHUNK_SIZES,
    DNABERT_S,
    EMBEDDER_MAX_BATCH,
    ESM2,
    NUM_FRAMES,
    classifier_name,
)
from virnucpro_triton.sequence import Frame, six_frames
from virnucpro_triton.serving.common import (
    BadRequest,
    answer,
    bls_output,
    bls_request,
    input_array,
    input_strings,
    log_loaded,
)

# Requests of one execute() in flight at once; each has at most 2 calls to each other entry.
CONCURRENT_REQUESTS = 16


async def _call(model: str, input_name: str, rows: np.ndarray, output_name: str) -> np.ndarray:
    """Run `rows` through another served model, in pieces it accepts, all in flight at once."""
    pieces = [rows[i : i + EMBEDDER_MAX_BATCH] for i in range(0, len(rows), EMBEDDER_MAX_BATCH)]
    responses = await asyncio.gather(
        *(bls_request(model, {input_name: piece}, output_name).async_exec() for piece in pieces)
    )
    return np.concatenate([bls_output(model, r, output_name) for r in responses])


def _chunks_of(request: Any) -> tuple[list[str], np.ndarray]:
    chunks = input_strings(request, "DNA")
    sizes = input_array(request, "CHUNK_SIZE").reshape(-1).astype(np.int64)
    if len(sizes) != len(chunks):  # Triton checks this too; a cheap guard against relying on it
        raise BadRequest("DNA and CHUNK_SIZE must have the same number of rows")
    for row, (chunk, size) in enumerate(zip(chunks, sizes)):
        # Checked first: sizes bound chunk lengths, and so the work and the embedders' inputs.
        if size not in CHUNK_SIZES:
            raise BadRequest(
                f"CHUNK_SIZE row {row}: there is no {classifier_name(size)}; "
                f"chunk sizes are {', '.join(map(str, CHUNK_SIZES))}"
            )
        if not chunk:
            raise BadRequest(f"DNA row {row}: empty chunk")
        bad = first_invalid(chunk)
        if bad:
            raise BadRequest(f"DNA row {row}: {bad.group()!r} is not a nucleotide code")
        if len(chunk) > size:
            raise BadRequest(f"DNA row {row}: chunk of {len(chunk)} bases for chunk size {size}")
    return chunks, sizes


class PipelineModel:
    def initialize(self, args: dict[str, Any]) -> None:
        log_loaded(args, "pipeline")

    async def execute(self, requests: list[Any]) -> list[Any]:
        # Requests run side by side, each with calls of its own: the embedders embed each call
        # alone, so results do not depend on what else is in flight, and a failure stays with
        # the request that met it. A bounded number at once keeps the calls of every pipeline
        # instance within the other entries' queues (repository.MAX_QUEUE_SIZE).
        limit = asyncio.Semaphore(CONCURRENT_REQUESTS)

        async def run(request: Any) -> dict[str, np.ndarray]:
            async with limit:
                return await self._run(request)

        results = await asyncio.gather(*map(run, requests), return_exceptions=True)
        return [answer(result) for result in results]

    async def _run(self, request: Any) -> dict[str, np.ndarray]:
        chunks, sizes = _chunks_of(request)
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
            probabilities[rows, columns] = await _classify(frames, sizes[rows])
            kept[rows, columns] = True
        return {"PROBABILITIES": probabilities, "FRAME_KEPT": kept}


async def _classify(frames: list[Frame], sizes: np.ndarray) -> np.ndarray:
    """P(others), P(virus) of each frame, by the classifier of its chunk size."""
    dna_features, protein_features = await asyncio.gather(
        _call(DNABERT_S, "SEQUENCE", _text([f.nucleotide for f in frames]), "EMBEDDING"),
        _call(ESM2, "SEQUENCE", _text([f.protein for f in frames]), "EMBEDDING"),
    )
    features = np.concatenate([dna_features, protein_features], axis=1)
    groups = {int(s): np.flatnonzero(sizes == s) for s in np.unique(sizes)}
    results = await asyncio.gather(
        *(
            _call(classifier_name(s), "FEATURES", features[rows], "PROBABILITIES")
            for s, rows in groups.items()
        )
    )
    probabilities = np.empty((len(frames), 2), np.float32)
    for rows, result in zip(groups.values(), results):
        probabilities[rows] = result
    return probabilities


def _text(strings: list[str]) -> np.ndarray:
    return np.array(strings, dtype=object).reshape(-1, 1)
