"""Triton entry: see virnucpro_triton.serving.classifier."""

from virnucpro_triton.serving.classifier import ClassifierModel as TritonPythonModel

__all__ = ["TritonPythonModel"]
