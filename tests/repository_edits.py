"""Changes to an exported repository's configs that no export option makes."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from virnucpro_triton import repository as repo


def set_parameter(
    repository: Path, key: str, value: str, names: Iterable[str] = (repo.DNABERT_S, repo.ESM2)
) -> None:
    """Set parameter `key` of entries `names` (the embedders unless told) in their config.pbtxt
    (weights untouched)."""
    for name in names:
        path = repository / name / "config.pbtxt"
        config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        config.parameters[key].string_value = value
        path.write_text(text_format.MessageToString(config))


def set_embedding_cache(repository: Path, cache_bytes: int) -> None:
    """Set the dnabert_s and esm2 entries' cache size."""
    set_parameter(repository, repo.EMBEDDING_CACHE_PARAMETER, str(cache_bytes))
