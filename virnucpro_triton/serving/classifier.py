"""Served `classifier_N` (one per chunk size): VirNucPro's MLP, features in, P(class) out.

The MLP runs where its architecture.json says (backends/factory.py): in torch, or in an
ONNX-format repository in the `classifier_N_onnx` entry, called through BLS.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from virnucpro_triton.backends.factory import classifier_backend
from virnucpro_triton.repository import BATCH_INVARIANT, read_architecture
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


class ClassifierModel:
    """Rows of concatenated DNABERT-S + ESM-2 features -> [P(others), P(virus)]."""

    def initialize(self, args: dict[str, Any]) -> None:
        config = EntryConfig(args)
        (self.input,) = config.names("input", 1)
        (self.output,) = config.names("output", 1)
        directory = version_dir(args)
        architecture = read_architecture(directory)
        batch_invariant = config.flag(BATCH_INVARIANT)
        self.classify = classifier_backend(directory, device_of(args), bls_run, batch_invariant)
        notes = ["classifier", architecture["dtype"], architecture["runtime"]]
        log_loaded(args, " ".join(notes + ["batch-invariant"] * batch_invariant))

    def _classify(self, request: Any) -> dict[str, np.ndarray]:
        features = input_array(request, self.input)
        if not np.isfinite(features).all():
            raise BadRequest(f"{self.input} holds NaN or infinite values")
        return {self.output: self.classify(features)}

    def execute(self, requests: list[Any]) -> list[Any]:
        return [answer(result) for result in try_each(requests, self._classify)]
