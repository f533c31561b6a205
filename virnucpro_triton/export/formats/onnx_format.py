"""ONNX format: the models as ONNX graphs for the onnxruntime backend of the NGC Triton container.

Each model gets a compute entry with `platform: "onnxruntime_onnx"` and `1/model.onnx`:

    dnabert_s_onnx      INPUT_IDS, ATTENTION_MASK INT64 [B, L] -> EMBEDDING FP32 [B, H]
    esm2_onnx           INPUT_IDS INT64 [B, L], right-padded with <pad> -> EMBEDDING FP32 [B, D]
    classifier_N_onnx   FEATURES FP32 [B, F] -> PROBABILITIES FP32 [B, 2]

Batch and length are dynamic axes. The string-facing Python entries (`dnabert_s`, `esm2`,
`classifier_N`) are written as in the torch format, minus the weights (architecture.json says
`"runtime": "onnx"`): they tokenize and batch as before and send the padded id batches to the
compute entry through BLS, so clients and the pipeline see the same API.

Graphs are opset 17 and fp32 only. A half-precision graph would need its own conversion and
could not be verified here: onnxruntime's CPU provider lacks fp16 kernels for most of these ops.

Every graph is checked with onnxruntime (CPU) through the same tokenization and batching as the
served entry, on probes of mixed lengths padded into shared batches, against the torch model
run one sequence at a time; beyond ONNX_MAX_ABS nothing is written. The embedded tritonserver of
this project has only the Python backend, so it cannot serve these entries: they are served by
the NGC container (`tritonserver:24.10-py3` or later), and only verified here.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnxruntime
import torch
from tokenizers import Tokenizer
from torch import nn

from virnucpro_triton import repository as repo
from virnucpro_triton.backends.base import GraphRun
from virnucpro_triton.backends.factory import classifier_backend, embedding_backend
from virnucpro_triton.export.verify import (
    Check,
    compare,
    probe_features,
    probe_frames,
    publish,
    reference_dna,
    reference_protein,
)
from virnucpro_triton.models.dnabert_s import DnabertS
from virnucpro_triton.models.esm2 import PAD_IDX, Esm2, pad_batch
from virnucpro_triton.models.mlp import MLPClassifier
from virnucpro_triton.sequence_embedders import DnaEmbedder, ProteinEmbedder

OPSET = 17  # the first with LayerNormalization; onnxruntime 1.19 (Triton 24.10) runs up to 21
# onnxruntime fuses and reorders LayerNorm, attention and GELU, so fp32 rounding differs more
# from torch than torch's own batched path does (FP32_MAX_ABS = 1e-5).
ONNX_MAX_ABS = 1e-4
# Weights beyond this go to an external data file: a protobuf cannot exceed 2 GiB, and the
# graph itself needs some room next to the weights.
EXTERNAL_DATA_BYTES = 2_000_000_000
# The device the backends' factory is told: the staged graphs run in onnxruntime, on the CPU.
_CPU = torch.device("cpu")


class _DnaGraph(nn.Module):
    def __init__(self, model: DnabertS):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.embed(input_ids, attention_mask)


class _ProteinGraph(nn.Module):
    def __init__(self, model: Esm2):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed(input_ids)


def parameter_bytes(module: nn.Module) -> int:
    """Bytes of everything the graph stores as initializers (parameters and buffers)."""
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def _dynamic_axes(tensors: Sequence[repo.Tensor]) -> dict[str, dict[int, str]]:
    # Axis 0 is Triton's batch; a -1 among the declared dims is the sequence length.
    return {
        t.name: {0: "batch", **{i + 1: "length" for i, d in enumerate(t.dims) if d == -1}}
        for t in tensors
    }


def export_graph(
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    inputs: Sequence[repo.Tensor],
    outputs: Sequence[repo.Tensor],
    version_dir: Path,
    external_data_bytes: int = EXTERNAL_DATA_BYTES,
) -> Path:
    """Write `module` as version_dir/model.onnx, with its weights in model.onnx.data when
    they exceed `external_data_bytes`. Tensor names and dynamic axes come from the entry's
    tensors, so the graph and its config.pbtxt agree by construction."""
    path = version_dir / repo.ONNX_MODEL
    with tempfile.TemporaryDirectory() as scratch:
        traced = Path(scratch) / repo.ONNX_MODEL
        with warnings.catch_warnings():
            # The TorchScript exporter: deprecated for the dynamo one, which is far slower on
            # these models, and it warns so (also from inside torch.onnx). It also warns about
            # the constants it traces (ALiBi slopes, head counts), which are constants here.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", "You are using the legacy", DeprecationWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
            torch.onnx.export(
                module.eval(),
                example,
                str(traced),
                input_names=[t.name for t in inputs],
                output_names=[t.name for t in outputs],
                dynamic_axes=_dynamic_axes([*inputs, *outputs]),
                opset_version=OPSET,
                dynamo=False,
            )
        # Loaded and saved again so that large weights land in one data file (the exporter
        # writes one file per tensor) and small models in one self-contained file.
        proto = onnx.load(str(traced))
        external = parameter_bytes(module) > external_data_bytes
        onnx.save_model(
            proto,
            str(path),
            save_as_external_data=external,
            all_tensors_to_one_file=True,
            location=repo.ONNX_DATA,
        )
    onnx.checker.check_model(str(path))
    return path


def onnxruntime_run(path: Path, output: str) -> GraphRun:
    """Run the graph at `path` on the CPU: named inputs -> the output `output`."""
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda inputs: session.run([output], inputs)[0]


def _example(pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two right-padded rows of different lengths and their mask: the trace sees padding."""
    ids = pad_batch([[0, 5, 6, 7, 8, 2], [0, 9, 2]], pad_id)
    return ids, ids.ne(pad_id).long()


def _graph_entry(
    staging: Path,
    name: str,
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    widths: dict[str, int],
    external_data_bytes: int,
    source: repo.Source,
) -> Path:
    """The compute entry behind Python entry `name`: 1/model.onnx and config.pbtxt (written
    last: it records the graph's sha256)."""
    spec = repo.spec_of(repo.onnx_name(name))
    version = staging / spec.name / "1"
    version.mkdir(parents=True)
    export_graph(module, example, spec.inputs, spec.outputs, version, external_data_bytes)
    return repo.write_entry(staging, repo.entry_config(spec, widths), source=source)


def _python_entry(
    staging: Path,
    name: str,
    kind: str,
    model: nn.Module,
    widths: dict[str, int],
    source: repo.Source,
    files: tuple[Path, ...] = (),
) -> Path:
    """The string-facing entry `name`: architecture.json (runtime onnx) but no weights."""
    config = repo.entry_config(repo.spec_of(name), widths)
    architecture = repo.architecture_of(kind, model, "fp32", runtime=repo.ONNX)
    return repo.write_entry(staging, config, architecture=architecture, files=files, source=source)


def _staged_graphs(staging: Path):
    """Graphs staged in `staging`, run by onnxruntime as their served entries would run them
    (the runner the backends' factory takes)."""
    return lambda name, output: onnxruntime_run(staging / name / "1" / repo.ONNX_MODEL, output)


@dataclass(frozen=True)
class OnnxFormat:
    """fp32 graphs; weights beyond `external_data_bytes` go to one external data file."""

    external_data_bytes: int = EXTERNAL_DATA_BYTES

    def dnabert_s(
        self, repository: Path, model: DnabertS, tokenizer_json: Path, source: repo.Source
    ) -> Check:
        """dnabert_s (tokenizer, BLS) + dnabert_s_onnx (graph), verified together."""
        model = model.float().eval()
        name, dim = repo.DNABERT_S, model.config.hidden_size
        widths = {repo.WIDTH: dim}

        def write(staging: Path) -> list[Path]:
            example = _example(Tokenizer.from_file(str(tokenizer_json)).token_to_id("[PAD]"))
            graph = (_DnaGraph(model), example, widths, self.external_data_bytes, source)
            return [
                _graph_entry(staging, name, *graph),
                _python_entry(staging, name, name, model, widths, source, (tokenizer_json,)),
            ]

        def verify(staging: Path) -> Check:
            version = staging / name / "1"
            backend = embedding_backend(version, _CPU, dim, _staged_graphs(staging))
            served = DnaEmbedder(backend, version / repo.TOKENIZER)
            dna, _ = probe_frames()
            reference = reference_dna(model, served, dna)
            return compare(repo.onnx_name(name), "fp32", reference, served(dna), ONNX_MAX_ABS)

        return publish(repository, write, verify)

    def esm2(self, repository: Path, model: Esm2, source: repo.Source) -> Check:
        """esm2 (tokenizer, BLS) + esm2_onnx (graph), verified together."""
        model = model.float().eval()
        name, dim = repo.ESM2, model.config.embed_dim
        widths = {repo.WIDTH: dim}

        def write(staging: Path) -> list[Path]:
            ids, _ = _example(PAD_IDX)  # the graph derives its mask from <pad>
            graph = (_ProteinGraph(model), (ids,), widths, self.external_data_bytes, source)
            return [
                _graph_entry(staging, name, *graph),
                _python_entry(staging, name, name, model, widths, source),
            ]

        def verify(staging: Path) -> Check:
            version = staging / name / "1"
            served = ProteinEmbedder(embedding_backend(version, _CPU, dim, _staged_graphs(staging)))
            _, protein = probe_frames()
            reference = reference_protein(model, served, protein)
            return compare(repo.onnx_name(name), "fp32", reference, served(protein), ONNX_MAX_ABS)

        return publish(repository, write, verify)

    def classifier(
        self, repository: Path, chunk_size: int, model: MLPClassifier, source: repo.Source
    ) -> Check:
        """classifier_N (BLS) + classifier_N_onnx (graph), verified together."""
        model = model.float().eval()
        name = repo.classifier_name(chunk_size)
        widths = {repo.FEATURE_WIDTH: model.hidden_layer.in_features}  # the same on both entries
        probe = probe_features(model.hidden_layer.in_features)

        def write(staging: Path) -> list[Path]:
            example = (torch.from_numpy(probe[:2]),)
            graph = (model, example, widths, self.external_data_bytes, source)
            return [
                _graph_entry(staging, name, *graph),
                _python_entry(staging, name, "classifier", model, widths, source),
            ]

        def verify(staging: Path) -> Check:
            version = staging / name / "1"
            classify = classifier_backend(version, _CPU, _staged_graphs(staging))
            with torch.inference_mode():
                reference = model(torch.from_numpy(probe)).numpy()
            return compare(repo.onnx_name(name), "fp32", reference, classify(probe), ONNX_MAX_ABS)

        return publish(repository, write, verify)
