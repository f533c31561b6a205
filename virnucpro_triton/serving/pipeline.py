"""Served `virnucpro`: DNA chunks in, six frames' class probabilities out.

Translation, the frame filter and the calls to the embedders and the classifier run here
(BLS), so one request from any Triton client runs the whole VirNucPro method. Frames of all
requests in an execute() go to the embedders together.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from virnucpro_triton.repository import (
    DNABERT_S,
    EMBEDDER_MAX_BATCH,
    ESM2,
    NUM_FRAMES,
    classifier_name,
)
from virnucpro_triton.sequence import first_invalid, six_frames
from virnucpro_triton.serving.common import (
    BadRequest,
    error_response,
    input_array,
    input_strings,
    log_loaded,
)


async def _call(model: str, input_name: str, rows: np.ndarray, output_name: str) -> np.ndarray:
    """Run `rows` through another served model, in pieces it accepts, all in flight at once."""
    pieces = [rows[i : i + EMBEDDER_MAX_BATCH] for i in range(0, len(rows), EMBEDDER_MAX_BATCH)]
    requests = [
        pb_utils.InferenceRequest(
            model_name=model,
            inputs=[pb_utils.Tensor(input_name, piece)],
            requested_output_names=[output_name],
        )
        for piece in pieces
    ]
    outputs = []
    for response in await asyncio.gather(*(r.async_exec() for r in requests)):
        if response.has_error():
            raise RuntimeError(f"{model}: {response.error().message()}")
        outputs.append(pb_utils.get_output_tensor_by_name(response, output_name).as_numpy())
    return np.concatenate(outputs)


def _chunks_of(request: Any) -> tuple[list[str], np.ndarray]:
    chunks = input_strings(request, "DNA")
    sizes = input_array(request, "CHUNK_SIZE").reshape(-1).astype(np.int64)
    if len(sizes) != len(chunks):
        raise BadRequest("DNA and CHUNK_SIZE must have the same number of rows")
    for row, (chunk, size) in enumerate(zip(chunks, sizes)):
        bad = first_invalid(chunk)
        if bad:
            raise BadRequest(f"DNA row {row}: {bad.group()!r} is not a nucleotide code")
        if size <= 0 or len(chunk) > size:
            raise BadRequest(f"DNA row {row}: chunk of {len(chunk)} bases for chunk size {size}")
    return chunks, sizes


class PipelineModel:
    def initialize(self, args: dict[str, Any]) -> None:
        log_loaded(args, "pipeline")

    async def execute(self, requests: list[Any]) -> list[Any]:
        parsed: list[tuple[list[str], np.ndarray] | str] = []
        dna: list[str] = []
        protein: list[str] = []
        owner: list[tuple[int, int, int]] = []  # (request, row, frame) of each kept frame
        size_of: list[int] = []
        for index, request in enumerate(requests):
            try:
                chunks, sizes = _chunks_of(request)
            except BadRequest as error:
                parsed.append(str(error))
                continue
            parsed.append((chunks, sizes))
            for row, (chunk, size) in enumerate(zip(chunks, sizes)):
                for f, frame in enumerate(six_frames(chunk)):
                    if frame is not None:
                        dna.append(frame.nucleotide)
                        protein.append(frame.protein)
                        owner.append((index, row, f))
                        size_of.append(int(size))

        try:
            probabilities = await self._classify(dna, protein, np.array(size_of, dtype=np.int64))
        except RuntimeError as error:
            return [error_response(str(error)) for _ in requests]

        outputs = {
            i: (
                np.full((len(p[0]), NUM_FRAMES, 2), np.nan, np.float32),
                np.zeros((len(p[0]), NUM_FRAMES), bool),
            )
            for i, p in enumerate(parsed)
            if not isinstance(p, str)
        }
        for (index, row, f), p in zip(owner, probabilities):
            outputs[index][0][row, f] = p
            outputs[index][1][row, f] = True
        return [
            error_response(p)
            if isinstance(p, str)
            else pb_utils.InferenceResponse(
                [
                    pb_utils.Tensor("PROBABILITIES", outputs[i][0]),
                    pb_utils.Tensor("FRAME_KEPT", outputs[i][1]),
                ]
            )
            for i, p in enumerate(parsed)
        ]

    async def _classify(self, dna: list[str], protein: list[str], sizes: np.ndarray) -> np.ndarray:
        probabilities = np.empty((len(dna), 2), np.float32)
        if not dna:
            return probabilities
        dna_features, protein_features = await asyncio.gather(
            _call(DNABERT_S, "SEQUENCE", np.array(dna, dtype=object).reshape(-1, 1), "EMBEDDING"),
            _call(ESM2, "SEQUENCE", np.array(protein, dtype=object).reshape(-1, 1), "EMBEDDING"),
        )
        features = np.concatenate([dna_features, protein_features], axis=1)
        groups = {int(s): np.flatnonzero(sizes == s) for s in np.unique(sizes)}
        results = await asyncio.gather(
            *(
                _call(classifier_name(s), "FEATURES", features[rows], "PROBABILITIES")
                for s, rows in groups.items()
            )
        )
        for rows, result in zip(groups.values(), results):
            probabilities[rows] = result
        return probabilities
