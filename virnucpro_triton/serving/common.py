"""What every served model needs from the Python backend: device, files, request decoding,
error answers and calls to other served models (BLS).

No torch here: the pipeline entry computes nothing with it, and each of its instances would
pay seconds of server start for the import.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import triton_python_backend_utils as pb_utils

if TYPE_CHECKING:
    import torch

T = TypeVar("T")
R = TypeVar("R")


class BadRequest(ValueError):
    """A request that this model answers with an error; other requests are unaffected."""


class ModelError(RuntimeError):
    """Another served model answered a BLS request with an error (e.g. its queue is full).

    Its status code does not survive BLS (it arrives as INTERNAL); its message does.
    """


def device_name(args: dict[str, Any]) -> str:
    """The instance's device: Triton places one instance per GPU, or on the CPU without one."""
    if args["model_instance_kind"] == "GPU":
        return f"cuda:{int(args['model_instance_device_id'])}"
    return "cpu"


def device_of(args: dict[str, Any]) -> torch.device:
    import torch  # by the entries that compute with it

    return torch.device(device_name(args))


def version_dir(args: dict[str, Any]) -> Path:
    return Path(args["model_repository"]) / args["model_version"]


class EntryConfig:
    """The config Triton loaded for this instance (`args["model_config"]`, JSON).

    Tensor names and limits are read from here, not from the code's constants: a repository
    serves with the values frozen into its config.pbtxt at export, whatever the code says now.
    """

    def __init__(self, args: dict[str, Any]):
        self.name = args["model_name"]
        self.config = json.loads(args["model_config"])

    def names(self, kind: str, count: int) -> list[str]:
        """The names of the `count` inputs (`kind` "input") or outputs ("output"), in order."""
        names = [tensor["name"] for tensor in self.config.get(kind, [])]
        if len(names) != count:
            raise ValueError(
                f"{self.name}: its config.pbtxt declares {kind}s {names}, this code serves "
                f"{count}: export the repository again"
            )
        return names

    def width(self) -> int:
        """The last dimension of the first output (an embedder's width)."""
        return int(self.config["output"][0]["dims"][-1])

    def parameter(self, key: str) -> str:
        """A string parameter, which export writes into every config of the entry's kind."""
        found = self.config.get("parameters", {}).get(key, {}).get("string_value")
        if found is None:
            raise ValueError(
                f"{self.name}: its config.pbtxt has no parameter {key}: export the repository again"
            )
        return found

    def limit(self, key: str) -> int:
        return int(self.parameter(key))

    def flag(self, key: str) -> bool:
        """A "true" or "false" parameter (a setting someone may have edited by hand)."""
        value = self.parameter(key)
        if value not in ("true", "false"):
            raise ValueError(f"{self.name}: parameter {key} is {value!r}, not true or false")
        return value == "true"


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


def try_each(items: list[T], function: Callable[[T], R]) -> list[R | Exception]:
    """`function` of each item, or the exception it raised: a failure stays with its own item."""
    results: list[R | Exception] = []
    for item in items:
        try:
            results.append(function(item))
        except Exception as error:
            results.append(error)
    return results


def answer(result: dict[str, np.ndarray] | BaseException) -> Any:
    """The response to one request: its named outputs, or the error that replaced them."""
    if isinstance(result, BaseException):
        return error_response(result)
    return pb_utils.InferenceResponse([pb_utils.Tensor(k, v) for k, v in result.items()])


def error_response(error: BaseException) -> Any:
    """The error answer to one request. A BadRequest or another model's error is said as it is;
    anything else is a bug of ours, logged with its traceback for the operator."""
    bad = isinstance(error, BadRequest)
    message = str(error)
    if not (bad or isinstance(error, ModelError)):
        pb_utils.Logger.log_error("".join(traceback.format_exception(error)))
        message = f"internal error: {type(error).__name__}: {error}"
    code = pb_utils.TritonError.INVALID_ARG if bad else pb_utils.TritonError.INTERNAL
    return pb_utils.InferenceResponse([], error=pb_utils.TritonError(message, code))


def bls_request(model: str, inputs: dict[str, np.ndarray], output: str) -> Any:
    return pb_utils.InferenceRequest(
        model_name=model,
        inputs=[pb_utils.Tensor(name, array) for name, array in inputs.items()],
        requested_output_names=[output],
        # A GPU onnxruntime instance may answer in GPU memory, which as_numpy() cannot read.
        preferred_memory=pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0),
    )


def bls_output(model: str, response: Any, output: str) -> np.ndarray:
    if response.has_error():
        raise ModelError(f"{model}: {response.error().message()}")
    return pb_utils.get_output_tensor_by_name(response, output).as_numpy()


def bls_run(model: str, output: str) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """Named input arrays -> one output array of another served model (blocking BLS call)."""
    return lambda inputs: bls_output(model, bls_request(model, inputs, output).exec(), output)


def log_loaded(args: dict[str, Any], what: str) -> None:
    # One line per instance load: the tests count them to prove models are not reloaded.
    pb_utils.Logger.log_info(
        f"virnucpro-triton: loaded {args['model_name']} ({what}) on {device_name(args)}"
    )
