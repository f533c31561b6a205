"""Served `classifier_300` / `classifier_500`: VirNucPro's MLP, features in, P(class) out."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from virnucpro_triton.repository import load_model
from virnucpro_triton.serving.common import device_of, error_response, log_loaded, version_dir


class ClassifierModel:
    """Rows of concatenated DNABERT-S + ESM-2 features -> [P(others), P(virus)]."""

    def initialize(self, args: dict[str, Any]) -> None:
        self.device = device_of(args)
        self.model, architecture = load_model(version_dir(args))
        self.model.to(self.device)
        self.dtype = next(self.model.parameters()).dtype
        log_loaded(args, f"classifier {architecture['dtype']}")

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            features = pb_utils.get_input_tensor_by_name(request, "FEATURES").as_numpy()
            if not np.isfinite(features).all():
                responses.append(error_response("FEATURES holds NaN or infinite values"))
                continue
            with torch.inference_mode():
                x = torch.from_numpy(features).to(self.device, self.dtype)
                probabilities = self.model(x).float().cpu().numpy()
            responses.append(
                pb_utils.InferenceResponse([pb_utils.Tensor("PROBABILITIES", probabilities)])
            )
        return responses
