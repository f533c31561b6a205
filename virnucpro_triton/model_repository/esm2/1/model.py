"""Triton entry: see virnucpro_triton.serving.embedding."""

from virnucpro_triton.serving.embedding import EmbeddingModel as TritonPythonModel

__all__ = ["TritonPythonModel"]
