"""The model repository: entry names, the served tensors, and how weights sit on disk.

Export writes entries with these definitions, the server models read them and the client
calls them: one description of the server API, used by all three.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from virnucpro_triton.errors import VirnucproError

if TYPE_CHECKING:
    # torch is imported where weights are handled, protobuf where configs are written: the
    # client and the pipeline's stubs (which import this module) never pay for them.
    import torch
    from tritonclient.grpc import model_config_pb2

DNABERT_S = "dnabert_s"
ESM2 = "esm2"
PIPELINE = "virnucpro"
CHUNK_SIZES = (300, 500)
FEATURE_DIM_DNA = 768  # the real sizes; tiny demo models declare their own in the config
NUM_FRAMES = 6


def classifier_name(chunk_size: int) -> str:
    return f"classifier_{chunk_size}"


def onnx_name(name: str) -> str:
    """The ONNX compute entry behind the Python entry `name` of an ONNX-format repository."""
    return f"{name}_onnx"


# Largest number of rows one execute() sees. A pipeline execute takes up to 16 client requests
# of 256 chunks at once and runs them concurrently: with one request per execute the embedders
# idled between requests (GPU busy 76%, docs/performance.md). Its frames (6 per chunk at most)
# fan out to the embedders in pieces of at most EMBEDDER_MAX_BATCH.
PIPELINE_MAX_BATCH = 4096
# Two pipeline instances per device: while one waits for the last answers of its batch, the
# other already feeds the embedders the next batch (it holds no model, only a stub process).
PIPELINE_INSTANCES = 2
EMBEDDER_MAX_BATCH = 1024
# Requests wait this long for others to join their batch: short, the CPU path is compute-bound.
QUEUE_DELAY_US = 2000
# Overload is answered "busy" (UNAVAILABLE: "Exceeds maximum queue size") at once instead of
# queueing without bound. Clients queue far less: `predict` keeps <= 64 requests in flight (4 by
# default), and a pipeline instance (one per GPU) adds at most 16 x 2 BLS requests to each other
# entry's queue (serving/pipeline.py), so 8 GPUs' fit. A full pipeline queue holds at most
# 256 requests x 4096 chunks x 500 bytes (0.5 GB).
# A request still queued after the client's own wait (Connection's 600 s) has nobody waiting
# for it any more: it is rejected too.
MAX_QUEUE_SIZE = 256
QUEUE_TIMEOUT_US = 600_000_000
# Longest sequences the embedders take: far above what the pipeline sends (frames of 500-bp
# chunks are <= 501 bases / 166 residues), low enough that one request cannot exhaust memory.
# Chunks sent to the pipeline are at most their CHUNK_SIZE long.
MAX_DNA_LENGTH = 20_000
MAX_PROTEIN_LENGTH = 4_000
# Largest request body or gRPC message the servers take (front_door.py refuses larger ones
# before they reach tritonserver). The largest legal request is a full dnabert_s batch
# (EMBEDDER_MAX_BATCH sequences of MAX_DNA_LENGTH bases: 20.5 MB); the client's own are far
# smaller (PIPELINE_MAX_BATCH chunks of at most 500 bases: 2 MB).
MAX_REQUEST_BYTES = 32 * 2**20

# Host memory per embedder instance (one per GPU) for embeddings of sequences seen before, the
# entries' parameter EMBEDDING_CACHE_PARAMETER (0 = off): about 100,000 ESM-2 3B frames (10.6 kB
# each with its key) or 300,000 DNABERT-S frames (3.6 kB).
EMBEDDING_CACHE_PARAMETER = "embedding_cache_bytes"
EMBEDDING_CACHE_BYTES = 1 << 30

# Flags every server of this project runs with: the embedded one (server.py), docker/Dockerfile,
# docker/k8s and docker/kserve (tests/test_hardening.py checks they agree).
# - Model control "none": every model loads at start, none can be loaded or unloaded over the API.
# - The shared-memory, trace and logging APIs are closed; no client of this project uses them.
#   Registering one of the Python backend's own regions (their names are visible in /dev/shm)
#   and asking a model to write its output there aborts tritonserver; trace and log settings
#   name files the server then writes. Triton opens a restricted API to requests carrying a
#   header key=value; these can carry neither: gRPC prefixes the key with
#   "triton-grpc-protocol-" and HTTP/2 header names are lowercase, so an uppercase letter never
#   matches; an HTTP/1.1 header value ends at a line break, and this value holds one.
CLOSED_APIS = "shared-memory,trace,logging"
CLOSED_KEY = "Closed"
CLOSED_VALUE = "by a\nline break"
SERVER_FLAGS = (
    "--model-control-mode=none",
    f"--http-restricted-api={CLOSED_APIS}:{CLOSED_KEY}={CLOSED_VALUE}",
    f"--grpc-restricted-protocol={CLOSED_APIS}:{CLOSED_KEY}={CLOSED_VALUE}",
)

WEIGHTS = "weights.safetensors"
ARCHITECTURE = "architecture.json"  # model kind, hyperparameters, dtype and runtime
TOKENIZER = "tokenizer.json"
MODEL_PY = "model.py"
ONNX_MODEL = "model.onnx"  # the file name Triton's onnxruntime backend loads
ONNX_DATA = "model.onnx.data"  # its external weights, when they do not fit a 2 GB protobuf
# Where the model of a Python entry runs: in the entry ("torch"), or in its ONNX compute entry
# ("onnx"), which the Python entry calls through BLS.
TORCH, ONNX = "torch", "onnx"
# Values of the esm2 entry's `fp8` parameter (models/fp8.py): FP8 matmuls nowhere, or in the
# feed-forward layers.
FP8_NONE, FP8_FEED_FORWARD = "none", "feed_forward"
# Each Python entry's model.py, copied by export: package data, so a wheel's export works too.
SOURCE_ENTRIES = Path(__file__).resolve().parent / "model_repository"


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


def onnx_embedder_tensors(kind: str, dim: int) -> tuple[list[Tensor], list[Tensor]]:
    """The ONNX graph of an embedder: right-padded token ids [B, L] in, pooled embedding out.

    DNABERT-S takes its attention mask as an input; ESM-2 derives it from the <pad> id.
    """
    inputs = [Tensor("INPUT_IDS", "TYPE_INT64", (-1,))]
    if kind == DNABERT_S:
        inputs.append(Tensor("ATTENTION_MASK", "TYPE_INT64", (-1,)))
    return inputs, [Tensor("EMBEDDING", "TYPE_FP32", (dim,))]


PIPELINE_INPUTS = [Tensor("DNA", "TYPE_STRING", (1,)), Tensor("CHUNK_SIZE", "TYPE_INT32", (1,))]
PIPELINE_OUTPUTS = [
    # Per chunk and frame (F1 F2 F3 R1 R2 R3): P(others), P(virus); NaN where dropped.
    Tensor("PROBABILITIES", "TYPE_FP32", (NUM_FRAMES, 2)),
    # False where the frame has a stop codon or no complete codon (VirNucPro drops it).
    Tensor("FRAME_KEPT", "TYPE_BOOL", (NUM_FRAMES,)),
]


def _config(
    name: str, inputs: list[Tensor], outputs: list[Tensor], max_batch_size: int, **fields: Any
) -> model_config_pb2.ModelConfig:
    """A ModelConfig with dynamic batching, validated by the protobuf schema as it is built.

    No instance kind is named: Triton then puts one instance on each visible GPU, or one on
    the CPU where there is none, so the same repository serves on both.
    """
    spec = {
        "name": name,
        "max_batch_size": max_batch_size,
        "input": [t.as_dict() for t in inputs],
        "output": [t.as_dict() for t in outputs],
        "dynamic_batching": {"max_queue_delay_microseconds": QUEUE_DELAY_US},
        **fields,
    }
    from google.protobuf import json_format
    from tritonclient.grpc import model_config_pb2

    return json_format.ParseDict(spec, model_config_pb2.ModelConfig())


def model_config(
    name: str,
    inputs: list[Tensor],
    outputs: list[Tensor],
    max_batch_size: int,
    parameters: dict[str, str] | None = None,
) -> model_config_pb2.ModelConfig:
    """A Python-backend entry, with a bounded queue (clients and BLS calls all enter here)."""
    from tritonclient.grpc import model_config_pb2

    config = _config(
        name,
        inputs,
        outputs,
        max_batch_size,
        backend="python",
        parameters={k: {"string_value": v} for k, v in (parameters or {}).items()},
    )
    if name == PIPELINE:  # the count applies per GPU (or once on the CPU): no kind named
        config.instance_group.add(count=PIPELINE_INSTANCES)
    policy = config.dynamic_batching.default_queue_policy
    policy.max_queue_size = MAX_QUEUE_SIZE
    policy.timeout_action = model_config_pb2.ModelQueuePolicy.REJECT
    policy.default_timeout_microseconds = QUEUE_TIMEOUT_US
    return config


def embedder_config(
    name: str, dim: int, fp8: str = FP8_NONE, cache_bytes: int = EMBEDDING_CACHE_BYTES
) -> model_config_pb2.ModelConfig:
    """The `dnabert_s` or `esm2` entry; `fp8` is the esm2 entry's FP8 setting (models/fp8.py),
    `cache_bytes` the size of its cache of embeddings (serving/embedding_cache.py; 0 = off)."""
    parameters = {"fp8": fp8, EMBEDDING_CACHE_PARAMETER: str(cache_bytes)}
    return model_config(name, *embedder_tensors(dim), EMBEDDER_MAX_BATCH, parameters)


def onnx_model_config(
    name: str, inputs: list[Tensor], outputs: list[Tensor], max_batch_size: int
) -> model_config_pb2.ModelConfig:
    """An entry served by the onnxruntime backend (NGC Triton containers) from 1/model.onnx."""
    return _config(name, inputs, outputs, max_batch_size, platform="onnxruntime_onnx")


@dataclass(frozen=True)
class Source:
    """The checkpoint an entry's weights came from, as the entry's config records it."""

    name: str  # its file (or directory) name
    sha256: str = ""
    random_weights: bool = False

    @classmethod
    def of(cls, path: Path) -> Source:
        """A file's sha256; a directory's is that of `LC_ALL=C sha256sum *` run in it (its
        files in name order), so a user can check either with sha256sum."""
        path = Path(path)
        if path.is_file():
            return cls(path.name, sha256_of(path))
        listing = "".join(
            f"{sha256_of(f)}  {f.name}\n"
            for f in sorted(path.iterdir(), key=lambda f: f.name.encode())
            if f.is_file() and not f.name.startswith(".")
        )
        return cls(path.name, hashlib.sha256(listing.encode()).hexdigest())


# Written by `export --tiny` and the benchmark: the demo's verdicts mean nothing.
TINY_SOURCE = Source("tiny demo model", random_weights=True)
BENCH_SOURCE = Source("benchmark model", random_weights=True)
# The config parameters that say where an entry comes from (besides the esm2 entry's `fp8`).
# Any Triton client reads them with the model-config API; `predict` puts them into run.json.
PROVENANCE = (
    "source",
    "source_sha256",
    "weights_sha256",  # JSON: {file in 1/: sha256}
    "dtype",
    "random_weights",  # "true" or "false"
    "virnucpro_triton_version",
)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _provenance(version: Path, source: Source | None, dtype: str | None) -> dict[str, str]:
    try:
        found = {"virnucpro_triton_version": metadata.version("virnucpro-triton")}
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        found = {"virnucpro_triton_version": "unknown"}
    if source is not None:
        weights = {
            f.name: sha256_of(f)
            for f in sorted(version.iterdir())
            if f.is_file() and f.name not in (MODEL_PY, ARCHITECTURE)
        }
        found |= {
            "source": source.name,
            "source_sha256": source.sha256,
            "weights_sha256": json.dumps(weights, sort_keys=True),
            "random_weights": str(source.random_weights).lower(),
        }
    if dtype is not None:
        found["dtype"] = dtype
    return found


def write_entry(
    repository: Path,
    config: model_config_pb2.ModelConfig,
    model: torch.nn.Module | None = None,
    architecture: dict[str, Any] | None = None,
    files: tuple[Path, ...] = (),
    source: Source | None = None,
) -> Path:
    """Write one entry: 1/model.py (Python backend), the weights when a model is given,
    architecture.json when one is given, copies of `files` into 1/, and config.pbtxt with the
    entry's provenance (PROVENANCE; `source` names the weights' origin, whose files in 1/ it
    hashes: those already there too, e.g. an ONNX graph)."""
    from google.protobuf import text_format

    entry = repository / config.name
    version = entry / "1"
    version.mkdir(parents=True, exist_ok=True)
    if config.backend == "python":
        source_py = SOURCE_ENTRIES / config.name / "1" / MODEL_PY
        target = version / MODEL_PY
        if source_py.resolve() != target.resolve():
            target.write_text(source_py.read_text())
    if model is not None:
        from safetensors.torch import save_file

        # Parameters take the entry's dtype; buffers keep theirs (ESM-2's rotary frequencies stay
        # fp32: rounded to bf16 they would shift the angles of far positions).
        dtype = torch_dtype(architecture["dtype"])
        parameters = {name for name, _ in model.named_parameters()}
        state = {
            k: (v.to(dtype) if k in parameters and v.is_floating_point() else v)
            .detach()
            .cpu()
            .contiguous()
            for k, v in model.state_dict().items()
        }
        save_file(state, str(version / WEIGHTS))
    if architecture is not None:
        (version / ARCHITECTURE).write_text(json.dumps(architecture, indent=2) + "\n")
    for path in files:
        shutil.copyfile(path, version / path.name)
    dtype_name = architecture["dtype"] if architecture else None
    for key, value in _provenance(version, source, dtype_name).items():
        config.parameters[key].string_value = value
    (entry / "config.pbtxt").write_text(text_format.MessageToString(config))
    return entry


def torch_dtype(name: str) -> torch.dtype:
    """fp32, bf16 or fp16 as a torch dtype."""
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def architecture_of(
    kind: str, model: torch.nn.Module, dtype: str, runtime: str = TORCH
) -> dict[str, Any]:
    """What `load_model` needs to rebuild `model`: its kind, hyperparameters and dtype; and
    where it runs (an ONNX-format Python entry keeps the description but no weights)."""
    if kind == "classifier":
        config = {
            "input_dim": model.hidden_layer.in_features,
            "hidden_dim": model.hidden_layer.out_features,
        }
    else:
        config = dataclasses.asdict(model.config)
    return {"kind": kind, "config": config, "dtype": dtype, "runtime": runtime}


def read_architecture(version_dir: Path) -> dict[str, Any]:
    """The entry's architecture.json, once every file the entry loads is known readable (the
    first thing a served entry reads)."""
    require_readable(version_dir)
    return json.loads((version_dir / ARCHITECTURE).read_text())


def require_readable(version_dir: Path) -> None:
    """Name an unreadable file: safetensors reports one as FileNotFoundError."""
    for path in sorted(version_dir.iterdir()):
        if path.is_file() and not os.access(path, os.R_OK):
            mode = path.stat().st_mode & 0o777
            raise PermissionError(
                f"{path}: permission denied (mode {mode:04o}, this process is uid {os.getuid()}); "
                "re-export the repository, or make it readable: chmod -R a+rX REPOSITORY"
            )


def runtime_of(architecture: dict[str, Any]) -> str:
    # Repositories written before ONNX export existed have no "runtime": they are torch.
    return architecture.get("runtime", TORCH)


def load_model(
    version_dir: Path, device: torch.device | str = "cpu"
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild an entry's model on `device` from its architecture.json and safetensors weights.

    The module is built on the meta device and takes the file's tensors as they are: no random
    initialization and no fp32 copy of a 3B model in host memory (ESM-2 3B loads in 12 s instead
    of 28 s on an H100 machine).
    """
    import torch
    from safetensors.torch import load_file

    from virnucpro_triton.models.classifier import MLPClassifier
    from virnucpro_triton.models.dnabert_s import DnabertConfig, DnabertS
    from virnucpro_triton.models.esm2 import Esm2, Esm2Config

    architecture = read_architecture(version_dir)
    if runtime_of(architecture) != TORCH:
        raise ValueError(
            f"{version_dir}: no torch weights here, the model runs in an ONNX entry "
            f"({onnx_name(version_dir.parent.name)})"
        )
    kind, config = architecture["kind"], architecture["config"]
    with torch.device("meta"):
        if kind == DNABERT_S:
            model: torch.nn.Module = DnabertS(DnabertConfig(**config))
        elif kind == ESM2:
            model = Esm2(Esm2Config(**config))
        elif kind == "classifier":
            model = MLPClassifier(config["input_dim"], config["hidden_dim"])
        else:
            raise ValueError(f"{version_dir / ARCHITECTURE}: unknown model kind {kind!r}")
    state = load_file(str(version_dir / WEIGHTS), device=str(torch.device(device)))
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(torch_dtype(architecture["dtype"])).eval(), architecture


def pipeline_entries(chunk_size: int) -> tuple[str, ...]:
    """The entries a `predict` run at `chunk_size` calls."""
    return PIPELINE, DNABERT_S, ESM2, classifier_name(chunk_size)


class RepositoryError(VirnucproError, ValueError):
    """A repository that cannot serve a run; the message says how to get one that can."""


# How to export each entry: the Makefile's variable and the checkpoint it takes.
_EXPORT_ARGUMENTS = {
    DNABERT_S: "DNABERT_S=DNABERT-S_DIR",
    ESM2: "ESM2=esm2_t36_3B_UR50D.pt",
    classifier_name(300): "CLASSIFIER_300=300_model.pth",
    classifier_name(500): "CLASSIFIER_500=500_model.pth",
}


def _entry_problem(entry: Path) -> str | None:
    """Why the server could not load `entry`, or None."""
    if not entry.is_dir():
        return "missing"
    if not (entry / "config.pbtxt").is_file():
        return "not exported (no config.pbtxt)"
    if entry.name == PIPELINE or entry.name.endswith("_onnx"):
        return None
    version = entry / "1"
    if not (version / ARCHITECTURE).is_file():
        return f"incomplete (no 1/{ARCHITECTURE})"
    if runtime_of(read_architecture(version)) == ONNX:
        return _entry_problem(entry.parent / onnx_name(entry.name))
    return None if (version / WEIGHTS).is_file() else f"incomplete (no 1/{WEIGHTS})"


def check_entries(repository: Path, needed: Iterable[str]) -> None:
    """Raise RepositoryError unless `repository` holds every `needed` entry, complete, and
    nothing the server would fail to load (it loads every entry there).

    Checked in milliseconds before a server start, which would take a minute to fail.
    """
    repository = Path(repository)
    present = (
        sorted(p.name for p in repository.iterdir() if p.is_dir() and not p.name.startswith("."))
        if repository.is_dir()
        else []
    )
    # Our entries there must be complete; entries of the user's own beside them are Triton's to
    # judge. Nothing asked for and nothing there (`serve` of an empty directory): a whole one.
    ours = [n for n in present if n == PIPELINE or n in _EXPORT_ARGUMENTS]
    whole = [] if present else [PIPELINE, *_EXPORT_ARGUMENTS]
    names = list(dict.fromkeys([*needed, *ours])) or whole
    problems = {n: p for n in names if (p := _entry_problem(repository / n))}
    if not problems:
        return
    weighted = [n for n in problems if n in _EXPORT_ARGUMENTS] or [
        n for n in names if n in _EXPORT_ARGUMENTS
    ]
    target = "" if repository == Path("model_repository") else f" REPOSITORY={repository}"
    export = " ".join(["make export", *(_EXPORT_ARGUMENTS[n] for n in weighted)]) + target
    listed = ", ".join(f"{n} {p}" for n, p in problems.items())
    if not repository.is_dir():
        listed = f"it does not exist (the run needs {', '.join(problems)})"
    raise RepositoryError(
        f"model repository {repository} cannot serve this run: {listed}. Export the real "
        f"checkpoints with `{export}` (README: Checkpoints), or run the demo's tiny "
        "random-weight models with `--repository build/demo_repository` (`make demo` writes it)"
    )
