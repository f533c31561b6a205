"""The export formats, each behind one interface (`Format`), chosen by `format_of`.

torch_format.py: weights served by the Python backend; onnx_format.py: fp32 ONNX graphs for the
onnxruntime backend, behind the same Python entries.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from virnucpro_triton import repository as repo
from virnucpro_triton.errors import VirnucproError

if TYPE_CHECKING:
    from virnucpro_triton.export.verify import Check
    from virnucpro_triton.models.dnabert_s import DnabertS
    from virnucpro_triton.models.esm2 import Esm2
    from virnucpro_triton.models.mlp import MLPClassifier

FORMATS = ("torch", "onnx")


class ExportError(VirnucproError, ValueError):
    """Export settings that cannot go together, or nothing to export; nothing was written."""

    resumable = False


class Format(Protocol):
    """Writes a model's verified entries into `repository` and returns their check; nothing is
    written for a model that fails it (export/verify.py `publish`)."""

    def dnabert_s(
        self, repository: Path, model: DnabertS, tokenizer_json: Path, source: repo.Source
    ) -> Check: ...

    def esm2(self, repository: Path, model: Esm2, source: repo.Source) -> Check: ...

    def classifier(
        self, repository: Path, chunk_size: int, model: MLPClassifier, source: repo.Source
    ) -> Check: ...


def format_of(
    name: str, dtype: str = "fp32", fp8: str = repo.FP8_NONE, batch_invariant: bool = False
) -> Format:
    """The format `name` writing `dtype` weights with ESM-2's `fp8` setting (models/fp8.py) and
    the entries' `batch_invariant` setting, or ExportError when they do not go together. The
    settings are named as the CLI spells them."""
    if name not in FORMATS:
        raise ExportError(f"unknown export format {name!r}; choose from {', '.join(FORMATS)}")
    if name == "onnx" and dtype != "fp32":
        raise ExportError("--format onnx writes fp32 graphs only: leave --dtype at fp32")
    if fp8 != repo.FP8_NONE and (name != "torch" or dtype != "bf16"):
        raise ExportError(f"--fp8 {fp8} needs --dtype bf16 and --format torch")
    if batch_invariant and name != "torch":
        # Triton's onnxruntime backend joins the fixed-shape batches sent to it into larger ones.
        raise ExportError("--batch-invariant needs --format torch")
    if name == "onnx":
        # Imported here: onnx and onnxruntime are needed only for this format.
        from virnucpro_triton.export.formats.onnx_format import OnnxFormat

        return OnnxFormat()
    from virnucpro_triton.export.formats.torch_format import TorchFormat

    return TorchFormat(dtype, fp8, batch_invariant)
