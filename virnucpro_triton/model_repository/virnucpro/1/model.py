"""Triton entry: see virnucpro_triton.serving.pipeline."""

from virnucpro_triton.serving.pipeline import PipelineModel as TritonPythonModel

__all__ = ["TritonPythonModel"]
