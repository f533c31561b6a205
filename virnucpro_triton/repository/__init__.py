"""The model repository, by job:

- spec.py: the contract: entry names, tensors, limits, and the table of entries
  (`entry_specs`) that everything else is generated from;
- config.py: an entry's config.pbtxt and model.py, generated from its spec;
- weights.py: weights on disk (write_entry, load_model, architecture.json, provenance);
- check.py: whether a repository on disk can serve a run.

Every public name of those is importable from here.
"""

from virnucpro_triton.repository.check import (  # noqa: F401
    RepositoryError,
    check_entries,
    classifier_sizes,
)
from virnucpro_triton.repository.config import (  # noqa: F401
    entry_config,
    model_py,
)
from virnucpro_triton.repository.spec import (  # noqa: F401
    ARCHITECTURE,
    ATTENTION_MASK,
    CALLS,
    CHUNK_SIZE,
    CHUNK_SIZES,
    CLASS_PROBABILITIES,
    CLOSED_APIS,
    CLOSED_KEY,
    CLOSED_VALUE,
    CONCURRENT_KEY,
    CONCURRENT_REQUESTS,
    DNA_CHUNKS,
    DNABERT_S,
    EMBEDDER_MAX_BATCH,
    EMBEDDING,
    EMBEDDING_CACHE_BYTES,
    EMBEDDING_CACHE_PARAMETER,
    ESM2,
    FEATURE_WIDTH,
    FEATURES,
    FP8_ALL,
    FP8_AUTO,
    FP8_FEED_FORWARD,
    FP8_NONE,
    FP8_VERIFIED,
    FRAME_KEPT,
    FRAME_PROBABILITIES,
    INPUT_IDS,
    MAX_BATCH_CHUNKS,
    MAX_DNA_LENGTH,
    MAX_LENGTH,
    MAX_PROTEIN_LENGTH,
    MAX_QUEUE_SIZE,
    MAX_REQUEST_BYTES,
    MAX_ROWS,
    MAX_ROWS_KEY,
    MODEL_PY,
    NUM_FRAMES,
    ONNX,
    ONNX_DATA,
    ONNX_MODEL,
    PIPELINE,
    PIPELINE_INSTANCES,
    PIPELINE_MAX_BATCH,
    PROVENANCE,
    QUEUE_DELAY_US,
    QUEUE_TIMEOUT_US,
    SEQUENCE,
    SERVER_FLAGS,
    TOKEN_BUDGET,
    TOKEN_BUDGET_KEY,
    TOKENIZER,
    TORCH,
    WEIGHTS,
    WIDTH,
    EntrySpec,
    Tensor,
    chunk_size_of,
    classifier_name,
    entry_specs,
    onnx_name,
    pipeline_entries,
    spec_of,
)
from virnucpro_triton.repository.weights import (  # noqa: F401
    BENCH_SOURCE,
    TINY_SOURCE,
    Source,
    architecture_of,
    load_model,
    provenance_values,
    read_architecture,
    require_readable,
    sha256_of,
    torch_dtype,
    write_config,
    write_entry,
)
