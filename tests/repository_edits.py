"""Changes to an exported repository's configs that no export option makes."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from virnucpro_triton import repository as repo


def set_embedder_parameter(repository: Path, key: str, value: str) -> None:
    """Set parameter `key` of the dnabert_s and esm2 entries in their config.pbtxt (weights
    untouched)."""
    for name in (repo.DNABERT_S, repo.ESM2):
        path = repository / name / "config.pbtxt"
        config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        config.parameters[key].string_value = value
        path.write_text(text_format.MessageToString(config))


def set_embedding_cache(repository: Path, cache_bytes: int) -> None:
    """Set the dnabert_s and esm2 entries' cache size."""
    set_embedder_parameter(repository, repo.EMBEDDING_CACHE_PARAMETER, str(cache_bytes))
