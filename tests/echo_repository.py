"""A one-model repository (`echo`, Python backend) for tests that start servers of their own:
the smallest thing a tritonserver serves."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

CONFIG = """
backend: "python"
max_batch_size: 0
input [{ name: "x", data_type: TYPE_FP32, dims: [-1] }]
output [
  { name: "y", data_type: TYPE_FP32, dims: [-1] },
  { name: "pid", data_type: TYPE_INT64, dims: [1] },
  { name: "inits", data_type: TYPE_INT64, dims: [1] },
  { name: "version", data_type: TYPE_STRING, dims: [1] }
]
instance_group [{ kind: KIND_CPU, count: 1 }]
"""


ECHO_MODEL = """
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

import virnucpro_triton  # noqa: F401  (fails the load unless the stub sees the project's env)

INITS = 0


class TritonPythonModel:
    def initialize(self, args):
        global INITS
        INITS += 1

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            outputs = [
                pb_utils.Tensor("y", x + 1),
                pb_utils.Tensor("pid", np.array([os.getpid()], dtype=np.int64)),
                pb_utils.Tensor("inits", np.array([INITS], dtype=np.int64)),
                pb_utils.Tensor("version", np.array([sys.version.encode()], dtype=np.object_)),
            ]
            responses.append(pb_utils.InferenceResponse(outputs))
        return responses
"""


def make_repository(root: Path, **models: str) -> Path:
    for name, code in models.items():
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(CONFIG)
        (root / name / "1" / "model.py").write_text(textwrap.dedent(code))
    return root


def infer(url: str, x: np.ndarray) -> grpcclient.InferResult:
    with grpcclient.InferenceServerClient(url) as client:
        inp = grpcclient.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        return client.infer("echo", [inp])
