"""The one place that tells torch from ONNX: an entry's architecture.json names its runtime, and
the backend built here runs it. Everything above holds a backend and never asks which."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from virnucpro_triton.backends.base import Backend, Classify, GraphRun
from virnucpro_triton.backends.onnx_backend import OnnxBackend
from virnucpro_triton.backends.torch_backend import TorchBackend, apply_fp8
from virnucpro_triton.repository import (
    BATCH_INVARIANT,
    ESM2,
    FP8_NONE,
    INVARIANT_CLASSIFIER_ROWS,
    ONNX,
    EntrySpec,
    load_model,
    onnx_name,
    read_architecture,
    spec_of,
)

# Where an ONNX entry's graph runs: (its compute entry's name, the output wanted) -> the graph
# (serving/common.py `bls_run` when served; onnxruntime on the staged graph at export).
GraphRunner = Callable[[str, str], GraphRun]


def embedding_backend(
    version: Path,
    device: torch.device,
    width: int,
    run_graph: GraphRunner | None = None,
    fp8: str = FP8_NONE,
    compiled_on_gpu: bool = False,
    batch_invariant: bool = False,
) -> Backend:
    """The backend of the embedder entry whose version directory is `version` (its model
    loaded on `device`, `width` wide). `run_graph` runs the graph of an ONNX-format entry;
    `fp8`: the entry's setting, for torch-format ESM-2 only; `compiled_on_gpu`: compile the
    model where `device` is a GPU (fusion pays there), unless `batch_invariant`: the compiled
    kernels are tuned on the machine, so two servers could compute a row differently."""
    architecture = read_architecture(version)
    kind, runtime = architecture["kind"], architecture["runtime"]
    if fp8 != FP8_NONE and (kind != ESM2 or runtime == ONNX):
        raise ValueError(f"parameter fp8 needs a torch-format esm2 entry, not {kind} {runtime}")
    _check_invariant(batch_invariant, runtime)
    if runtime == ONNX:
        graph, run = _graph(version, run_graph)
        return OnnxBackend(run, [t.name for t in graph.inputs], width)
    model, _ = load_model(version, device)
    done = apply_fp8(model, fp8, device)
    compiled = compiled_on_gpu and device.type == "cuda" and not batch_invariant
    return TorchBackend(model, device, compiled, done)


def classifier_backend(
    version: Path,
    device: torch.device,
    run_graph: GraphRunner | None = None,
    batch_invariant: bool = False,
) -> Classify:
    """The classifier of the entry whose version directory is `version`, on `device`;
    `batch_invariant`: in batches of INVARIANT_CLASSIFIER_ROWS rows exactly."""
    runtime = read_architecture(version)["runtime"]
    _check_invariant(batch_invariant, runtime)
    if runtime == ONNX:
        graph, run = _graph(version, run_graph)
        return lambda features: run({graph.inputs[0].name: features})
    model, _ = load_model(version, device)
    dtype = next(model.parameters()).dtype

    @torch.inference_mode()
    def classify(features):
        return model(torch.from_numpy(features).to(device, dtype)).float().cpu().numpy()

    return _in_fixed_batches(classify) if batch_invariant else classify


def _check_invariant(batch_invariant: bool, runtime: str) -> None:
    # An ONNX graph runs in Triton's onnxruntime entry, whose dynamic batcher joins the
    # fixed-shape batches sent to it into larger ones.
    if batch_invariant and runtime == ONNX:
        raise ValueError(f"parameter {BATCH_INVARIANT} needs a torch-format entry, not {ONNX}")


def _in_fixed_batches(classify: Classify) -> Classify:
    """`classify` on batches of exactly INVARIANT_CLASSIFIER_ROWS rows (the last filled up with
    copies of its first row), whatever the number of rows asked for."""
    rows = INVARIANT_CLASSIFIER_ROWS

    def run(features: np.ndarray) -> np.ndarray:
        parts = []
        for start in range(0, len(features), rows):
            part = features[start : start + rows]
            filled = np.concatenate([part, np.repeat(part[:1], rows - len(part), axis=0)])
            parts.append(classify(filled)[: len(part)])
        return np.concatenate(parts) if parts else classify(features)

    return run


def _graph(version: Path, run_graph: GraphRunner | None) -> tuple[EntrySpec, GraphRun]:
    """The spec of the ONNX compute entry behind the entry of `version`, and its graph run."""
    graph = spec_of(onnx_name(version.parent.name))
    if run_graph is None:
        raise ValueError(f"{version}: the model runs in the ONNX entry {graph.name}, not here")
    return graph, run_graph(graph.name, graph.outputs[0].name)
