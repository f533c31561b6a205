"""The contract between export, server and client: entry names, tensors and limits.

`entry_specs()` is the one table of the model repository's entries. Export generates each
entry's config.pbtxt and model.py from it (config.py), the served models read their names and
limits back from the config Triton loaded (serving/), and the client sends the tensors named
here. Adding an entry or a chunk size is a change to that table.

Plain data: no torch, no protobuf, no file access (the CLI and the pipeline's stubs import it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

DNABERT_S = "dnabert_s"
ESM2 = "esm2"
PIPELINE = "virnucpro"
CHUNK_SIZES = (300, 500)  # the published classifiers (300_model.pth, 500_model.pth)
NUM_FRAMES = 6


def classifier_name(chunk_size: int) -> str:
    return f"classifier_{chunk_size}"


def chunk_size_of(name: str) -> int | None:
    """The chunk size of a classifier entry's name (not of its ONNX compute entry), or None."""
    found = re.fullmatch(r"classifier_(\d+)", name)
    return int(found[1]) if found else None


def onnx_name(name: str) -> str:
    """The ONNX compute entry behind the Python entry `name` of an ONNX-format repository."""
    return f"{name}_onnx"


def pipeline_entries(chunk_size: int) -> tuple[str, ...]:
    """The entries a `predict` run at `chunk_size` calls."""
    return PIPELINE, DNABERT_S, ESM2, classifier_name(chunk_size)


# ---- Limits. Each is written into the configs it concerns; the served models read it from there.

# Largest number of rows one execute() sees. A pipeline execute takes up to 16 client requests
# of 256 chunks at once and runs them concurrently: with one request per execute the embedders
# would idle between requests (docs/performance.md). Its frames (6 per chunk at most)
# fan out to the embedders in pieces of at most their max_batch_size.
PIPELINE_MAX_BATCH = 4096
# Chunks in one client request (`predict --batch-chunks`, the workflow's batch_chunks): a
# quarter of an execute, so one execute still takes several requests. Larger requests serve a
# GPU faster (docs/performance.md, request size); the client's default stays small
# (client/classify.py BATCH_CHUNKS) for CPU servers.
MAX_BATCH_CHUNKS = PIPELINE_MAX_BATCH // 4
# Two pipeline instances per device: while one waits for the last answers of its batch, the
# other already feeds the embedders the next batch (it holds no model, only a stub process).
PIPELINE_INSTANCES = 2
EMBEDDER_MAX_BATCH = 1024
# Requests of one pipeline execute() in flight at once; each has at most 2 calls to each other
# entry (serving/pipeline.py).
CONCURRENT_REQUESTS = 16
# Requests wait this long for others to join their batch: short, the CPU path is compute-bound.
QUEUE_DELAY_US = 2000
# Overload is answered "busy" (UNAVAILABLE: "Exceeds maximum queue size") at once instead of
# queueing without bound. Clients queue far less: `predict` keeps <= 64 requests in flight (4 by
# default), and a pipeline instance (two per GPU) adds at most 16 x 2 BLS requests to each other
# entry's queue: four GPUs' fill it exactly (docs/performance.md, several GPUs). A full
# pipeline queue holds at most
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
# An embedder's batches: tokens (as padded, where batches are padded; ESM-2 packed on a GPU
# counts real ones) and rows at most (sequence_embedders.py sorts by length first).
TOKEN_BUDGET = 16_384
MAX_ROWS = 256
# Largest request body or gRPC message the servers take (door/app.py refuses larger ones
# before they reach tritonserver). The largest legal request is a full dnabert_s batch
# (EMBEDDER_MAX_BATCH sequences of MAX_DNA_LENGTH bases: 20.5 MB); the client's own are far
# smaller (PIPELINE_MAX_BATCH chunks of at most 500 bases: 2 MB).
MAX_REQUEST_BYTES = 32 * 2**20
# Host memory per embedder instance (one per GPU) for embeddings of sequences seen before, the
# entries' parameter EMBEDDING_CACHE_PARAMETER (0 = off): an ESM-2 3B frame costs its
# 2,560 float32 and its key (frames per GiB: docs/performance.md).
EMBEDDING_CACHE_PARAMETER = "embedding_cache_bytes"
EMBEDDING_CACHE_BYTES = 1 << 30
# Batch-invariant mode, the embedders' and classifiers' parameter BATCH_INVARIANT ("true" or
# "false", export --batch-invariant): every frame's embeddings and probabilities are the same
# bytes whatever else shares its batch. Dynamic batching puts a row into other batches on every
# run, and kernels choose their reduction order by the batch's shape; in this mode every batch
# a row can land in has one shape, which that row alone decides (sequence_embedders.py), and
# every kernel does the same arithmetic for each row of a shape. Off by default: it costs
# throughput (README, What is identical between runs).
BATCH_INVARIANT = "batch_invariant"
# ... a sequence's batch is its own token count rounded up to a multiple of this, and holds
# as many rows as the embedder's budget allows at that width;
INVARIANT_WIDTH_STEP = 16
# ... a classifier's batches hold exactly this many rows.
INVARIANT_CLASSIFIER_ROWS = 256

# Flags every server of this project runs with: the embedded one (server.py), docker/Dockerfile,
# docker/k8s and docker/kserve (tests/unit/test_server_flags.py checks they agree).
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

# ---- Files of an entry's version directory 1/.
WEIGHTS = "weights.safetensors"
ARCHITECTURE = "architecture.json"  # model kind, hyperparameters, dtype and runtime
TOKENIZER = "tokenizer.json"
MODEL_PY = "model.py"
ONNX_MODEL = "model.onnx"  # the file name Triton's onnxruntime backend loads
ONNX_DATA = "model.onnx.data"  # its external weights, when they do not fit a 2 GB protobuf
# Where the model of a Python entry runs: in the entry ("torch"), or in its ONNX compute entry
# ("onnx"), which the Python entry calls through BLS.
TORCH, ONNX = "torch", "onnx"
# Values of the esm2 entry's `fp8` parameter (models/fp8.py): FP8 matmuls nowhere, in ESM-2's
# feed-forward layers, in all its linear layers, or a comma-separated list of its layers
# ("layers.0.fc1,layers.0.fc2", as export chose them on the weights: export/fp8_choice.py).
# FP8_VERIFIED holds export's numbers for the setting. FP8_AUTO asks export to choose (never in
# a config).
FP8_NONE, FP8_FEED_FORWARD, FP8_ALL, FP8_AUTO = "none", "feed_forward", "all", "auto"
FP8_VERIFIED = "fp8_verified"
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

# ---- Tensors.

# Widths the exported model decides; a config is generated with their values (config.py).
WIDTH = "width"  # an embedder's output: 768 for DNABERT-S, 2560 for ESM-2 3B
FEATURE_WIDTH = "features"  # a classifier's input: the two embedders' widths together


@dataclass(frozen=True)
class Tensor:
    name: str
    data_type: str  # ModelConfig enum name, e.g. TYPE_FP32
    dims: tuple[int | str, ...]  # -1: variable length; a str: one of the widths above

    def as_dict(self, widths: Mapping[str, int] | None = None) -> dict:
        dims = [d if isinstance(d, int) else (widths or {})[d] for d in self.dims]
        return {"name": self.name, "data_type": self.data_type, "dims": dims}


# The embedders: one sequence per row in, its pooled embedding out.
SEQUENCE = Tensor("SEQUENCE", "TYPE_STRING", (1,))
EMBEDDING = Tensor("EMBEDDING", "TYPE_FP32", (WIDTH,))
# A classifier: the concatenated embeddings of a frame in, P(others), P(virus) out.
FEATURES = Tensor("FEATURES", "TYPE_FP32", (FEATURE_WIDTH,))
CLASS_PROBABILITIES = Tensor("PROBABILITIES", "TYPE_FP32", (2,))
# The pipeline: one chunk per row and the chunk size it was cut at.
DNA_CHUNKS = Tensor("DNA", "TYPE_STRING", (1,))
CHUNK_SIZE = Tensor("CHUNK_SIZE", "TYPE_INT32", (1,))
# Per chunk and frame (F1 F2 F3 R1 R2 R3): P(others), P(virus); NaN where dropped.
FRAME_PROBABILITIES = Tensor("PROBABILITIES", "TYPE_FP32", (NUM_FRAMES, 2))
# False where the frame has a stop codon or no complete codon (VirNucPro drops it).
FRAME_KEPT = Tensor("FRAME_KEPT", "TYPE_BOOL", (NUM_FRAMES,))
# The ONNX graph of an embedder: right-padded token ids [B, L] in. DNABERT-S takes its attention
# mask as an input; ESM-2 derives it from the <pad> id.
INPUT_IDS = Tensor("INPUT_IDS", "TYPE_INT64", (-1,))
ATTENTION_MASK = Tensor("ATTENTION_MASK", "TYPE_INT64", (-1,))

# ---- Entries.

# Config parameters holding limits that the served models read back (serving/): a repository
# keeps serving with the values frozen into its configs at export, whatever the code says now.
MAX_LENGTH = "max_length"  # embedders: longest sequence taken
TOKEN_BUDGET_KEY = "token_budget"  # embedders: tokens per batch, as padded where batches are
MAX_ROWS_KEY = "max_rows"  # embedders: rows per batch
CONCURRENT_KEY = "concurrent_requests"  # the pipeline: requests of one execute() at once
# The pipeline: {entry: max_batch_size} of the entries it calls (JSON), read from their configs
# at export; the classifiers listed are the chunk sizes it serves.
CALLS = "calls"


@dataclass(frozen=True)
class EntrySpec:
    """One entry of the repository: everything its config.pbtxt and model.py are made of."""

    name: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    max_batch_size: int
    # The Python-backend model class that model.py re-exports ("package.module.Class"); None:
    # an ONNX graph served by Triton's onnxruntime backend.
    model: str | None
    # Instances per GPU (or once on the CPU); None: Triton's default, one. No kind is named, so
    # the same repository serves on GPUs and on a CPU.
    instances: int | None = None
    queue_delay_us: int = QUEUE_DELAY_US
    # A bounded queue that rejects what waits too long; None: Triton's unbounded default.
    max_queue_size: int | None = MAX_QUEUE_SIZE
    queue_timeout_us: int = QUEUE_TIMEOUT_US
    # String parameters of the config: settings and limits the served model reads back.
    parameters: Mapping[str, str] = field(default_factory=dict)

    @property
    def backend(self) -> str:
        return "python" if self.model else "onnxruntime"


_EMBEDDING_MODEL = "virnucpro_triton.serving.embedding.EmbeddingModel"
_EMBEDDER_LIMITS = {
    TOKEN_BUDGET_KEY: str(TOKEN_BUDGET),
    MAX_ROWS_KEY: str(MAX_ROWS),
    EMBEDDING_CACHE_PARAMETER: str(EMBEDDING_CACHE_BYTES),
}

# Settings of the embedders and classifiers, as export writes them unless told otherwise.
_SETTINGS = {BATCH_INVARIANT: "false"}


def _graph(name: str, inputs: tuple[Tensor, ...], outputs: tuple[Tensor, ...]) -> EntrySpec:
    """The ONNX compute entry behind Python entry `name` (its callers' queues bound its work)."""
    return EntrySpec(
        onnx_name(name), inputs, outputs, EMBEDDER_MAX_BATCH, model=None, max_queue_size=None
    )


def entry_specs(chunk_sizes: tuple[int, ...] = CHUNK_SIZES) -> dict[str, EntrySpec]:
    """Every entry a repository can hold, by name: the Python entries, then the ONNX compute
    entries of the ONNX format. `chunk_sizes`: the classifiers (one entry per chunk size)."""
    classifiers = [classifier_name(size) for size in chunk_sizes]
    entries = [
        EntrySpec(
            DNABERT_S,
            (SEQUENCE,),
            (EMBEDDING,),
            EMBEDDER_MAX_BATCH,
            _EMBEDDING_MODEL,
            parameters={
                "fp8": FP8_NONE,
                MAX_LENGTH: str(MAX_DNA_LENGTH),
                **_EMBEDDER_LIMITS,
                **_SETTINGS,
            },
        ),
        EntrySpec(
            ESM2,
            (SEQUENCE,),
            (EMBEDDING,),
            EMBEDDER_MAX_BATCH,
            _EMBEDDING_MODEL,
            parameters={
                "fp8": FP8_NONE,
                MAX_LENGTH: str(MAX_PROTEIN_LENGTH),
                **_EMBEDDER_LIMITS,
                **_SETTINGS,
            },
        ),
        *(
            EntrySpec(
                name,
                (FEATURES,),
                (CLASS_PROBABILITIES,),
                EMBEDDER_MAX_BATCH,
                "virnucpro_triton.serving.classifier.ClassifierModel",
                parameters=_SETTINGS,
            )
            for name in classifiers
        ),
        EntrySpec(
            PIPELINE,
            (DNA_CHUNKS, CHUNK_SIZE),
            (FRAME_PROBABILITIES, FRAME_KEPT),
            PIPELINE_MAX_BATCH,
            "virnucpro_triton.serving.pipeline.PipelineModel",
            instances=PIPELINE_INSTANCES,
            parameters={CONCURRENT_KEY: str(CONCURRENT_REQUESTS)},
        ),
        _graph(DNABERT_S, (INPUT_IDS, ATTENTION_MASK), (EMBEDDING,)),
        _graph(ESM2, (INPUT_IDS,), (EMBEDDING,)),
        *(_graph(name, (FEATURES,), (CLASS_PROBABILITIES,)) for name in classifiers),
    ]
    return {entry.name: entry for entry in entries}


def spec_of(name: str) -> EntrySpec:
    """The spec of entry `name`; a classifier of any chunk size has one."""
    size = chunk_size_of(name.removesuffix("_onnx"))
    return entry_specs(CHUNK_SIZES if size is None else (size,))[name]
