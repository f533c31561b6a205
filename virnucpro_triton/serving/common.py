"""What every served model needs from the Python backend: device, files, request decoding."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import triton_python_backend_utils as pb_utils


class BadRequest(ValueError):
    """A request that this model answers with an error; other requests are unaffected."""


def device_of(args: dict[str, Any]) -> torch.device:
    """The instance's device: Triton places one instance per GPU, or on the CPU without one."""
    if args["model_instance_kind"] == "GPU":
        return torch.device("cuda", int(args["model_instance_device_id"]))
    return torch.device("cpu")


def version_dir(args: dict[str, Any]) -> Path:
    return Path(args["model_repository"]) / args["model_version"]


def input_array(request: Any, name: str) -> np.ndarray:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        raise BadRequest(f"missing input {name}")
    return tensor.as_numpy()


def input_strings(request: Any, name: str) -> list[str]:
    """A [batch, 1] BYTES input as text; non-ASCII content is refused, not guessed at."""
    try:
        return [item.decode("ascii") for item in input_array(request, name).reshape(-1)]
    except (UnicodeDecodeError, AttributeError):
        raise BadRequest(f"{name} must hold ASCII text") from None


def error_response(message: str) -> Any:
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))


def log_loaded(args: dict[str, Any], what: str) -> None:
    # One line per instance load: the tests count them to prove models are not reloaded.
    pb_utils.Logger.log_info(
        f"virnucpro-triton: loaded {args['model_name']} ({what}) on {device_of(args)}"
    )
