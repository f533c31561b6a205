"""The model repository: entry names, the served tensors, and how weights sit on disk.

Export writes entries with these definitions, the server models read them and the client
calls them: one description of the server API, used by all three.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from google.protobuf import json_format, text_format
from safetensors.torch import load_file, save_file
from tritonclient.grpc import model_config_pb2

DNABERT_S = "dnabert_s"
ESM2 = "esm2"
PIPELINE = "virnucpro"
CHUNK_SIZES = (300, 500)
FEATURE_DIM_DNA = 768  # the real sizes; tiny demo models declare their own in the config
NUM_FRAMES = 6


def classifier_name(chunk_size: int) -> str:
    return f"classifier_{chunk_size}"


# Largest number of rows one execute() sees. The pipeline's frames (6 per chunk) fan out to
# the embedders in pieces of at most EMBEDDER_MAX_BATCH.
PIPELINE_MAX_BATCH = 256
EMBEDDER_MAX_BATCH = 1024
# Requests wait this long for others to join their batch: short, the CPU path is compute-bound.
QUEUE_DELAY_US = 2000

WEIGHTS = "weights.safetensors"
ARCHITECTURE = "architecture.json"  # model kind, hyperparameters and dtype
TOKENIZER = "tokenizer.json"
MODEL_PY = "model.py"
SOURCE_ENTRIES = Path(__file__).resolve().parent.parent / "model_repository"


@dataclass(frozen=True)
class Tensor:
    name: str
    data_type: str  # ModelConfig enum name, e.g. TYPE_FP32
    dims: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "data_type": self.data_type, "dims": list(self.dims)}


def embedder_tensors(dim: int) -> tuple[list[Tensor], list[Tensor]]:
    return [Tensor("SEQUENCE", "TYPE_STRING", (1,))], [Tensor("EMBEDDING", "TYPE_FP32", (dim,))]


def classifier_tensors(input_dim: int) -> tuple[list[Tensor], list[Tensor]]:
    return [Tensor("FEATURES", "TYPE_FP32", (input_dim,))], [
        Tensor("PROBABILITIES", "TYPE_FP32", (2,))
    ]


PIPELINE_INPUTS = [Tensor("DNA", "TYPE_STRING", (1,)), Tensor("CHUNK_SIZE", "TYPE_INT32", (1,))]
PIPELINE_OUTPUTS = [
    # Per chunk and frame (F1 F2 F3 R1 R2 R3): P(others), P(virus); NaN where dropped.
    Tensor("PROBABILITIES", "TYPE_FP32", (NUM_FRAMES, 2)),
    # False where the frame has a stop codon or no complete codon (VirNucPro drops it).
    Tensor("FRAME_KEPT", "TYPE_BOOL", (NUM_FRAMES,)),
]


def model_config(
    name: str,
    inputs: list[Tensor],
    outputs: list[Tensor],
    max_batch_size: int,
    parameters: dict[str, str] | None = None,
) -> model_config_pb2.ModelConfig:
    """A Python-backend ModelConfig, validated by the protobuf schema as it is built.

    No instance kind is named: Triton then puts one instance on each visible GPU, or one on
    the CPU where there is none, so the same repository serves on both.
    """
    spec = {
        "name": name,
        "backend": "python",
        "max_batch_size": max_batch_size,
        "input": [t.as_dict() for t in inputs],
        "output": [t.as_dict() for t in outputs],
        "dynamic_batching": {"max_queue_delay_microseconds": QUEUE_DELAY_US},
        "parameters": {k: {"string_value": v} for k, v in (parameters or {}).items()},
    }
    return json_format.ParseDict(spec, model_config_pb2.ModelConfig())


def write_entry(
    repository: Path,
    config: model_config_pb2.ModelConfig,
    model: torch.nn.Module | None = None,
    architecture: dict[str, Any] | None = None,
) -> Path:
    """Write one entry: config.pbtxt, 1/model.py, and the weights when the model has any."""
    entry = repository / config.name
    version = entry / "1"
    version.mkdir(parents=True, exist_ok=True)
    (entry / "config.pbtxt").write_text(text_format.MessageToString(config))
    source = SOURCE_ENTRIES / config.name / "1" / MODEL_PY
    target = version / MODEL_PY
    if source.resolve() != target.resolve():
        target.write_text(source.read_text())
    if model is not None:
        dtype = DTYPES[architecture["dtype"]]
        state = {
            k: (v.to(dtype) if v.is_floating_point() else v).detach().contiguous()
            for k, v in model.state_dict().items()
        }
        save_file(state, str(version / WEIGHTS))
        (version / ARCHITECTURE).write_text(json.dumps(architecture, indent=2) + "\n")
    return entry


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def architecture_of(kind: str, model: torch.nn.Module, dtype: str) -> dict[str, Any]:
    """What `load_model` needs to rebuild `model`: its kind, hyperparameters and dtype."""
    if kind == "classifier":
        config = {
            "input_dim": model.hidden_layer.in_features,
            "hidden_dim": model.hidden_layer.out_features,
        }
    else:
        config = dataclasses.asdict(model.config)
    return {"kind": kind, "config": config, "dtype": dtype}


def read_architecture(version_dir: Path) -> dict[str, Any]:
    return json.loads((version_dir / ARCHITECTURE).read_text())


def load_model(version_dir: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild an entry's model from its architecture.json and safetensors weights."""
    from virnucpro_triton.models.classifier import MLPClassifier
    from virnucpro_triton.models.dnabert_s import DnabertConfig, DnabertS
    from virnucpro_triton.models.esm2 import Esm2, Esm2Config

    architecture = read_architecture(version_dir)
    kind, config = architecture["kind"], architecture["config"]
    if kind == DNABERT_S:
        model: torch.nn.Module = DnabertS(DnabertConfig(**config))
    elif kind == ESM2:
        model = Esm2(Esm2Config(**config))
    elif kind == "classifier":
        model = MLPClassifier(config["input_dim"], config["hidden_dim"])
    else:
        raise ValueError(f"{version_dir / ARCHITECTURE}: unknown model kind {kind!r}")
    model.load_state_dict(load_file(str(version_dir / WEIGHTS)), strict=True)
    return model.to(DTYPES[architecture["dtype"]]).eval(), architecture
