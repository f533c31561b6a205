"""Batch invariance (issue 28): how many result rows move between served runs that differ only in
what shares a frame's batch, which module first computes a row differently in a batch than
alone, and what the batch-invariant mode (repository/spec.py BATCH_INVARIANT) costs.

A row "moves" when its probabilities differ in any bit. Served runs compared: the same input
twice against one server, and the input's first frames sent one chunk per request against the
bench's --batch-chunks. Both in the default mode and in the batch-invariant mode, each on a
server of its own that serves all its runs (a full-size server start compiles ESM-2 3B), with
the embedders' cache off: with it, a repeated run would take every embedding from the cache and
compute none in a batch.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from benchmarks.served import ServedRun, client_settings, served
from benchmarks.workload import write_prefix
from tests.repository_edits import set_embedding_cache, set_parameter
from virnucpro_triton import repository as repo
from virnucpro_triton.backends.torch_backend import TorchBackend
from virnucpro_triton.commands.predict import predict
from virnucpro_triton.results import frame_table
from virnucpro_triton.sequence_embedders import DnaEmbedder, ProteinEmbedder

# Rows per embedder whose module outputs are compared in their batch and alone.
HOOK_ROWS = 4
# What `first_module` says when every module agrees but the pooled embedding does not.
POOLING = "pooling"


def moved_rows(a: Path, b: Path) -> dict:
    """Rows of run `b`'s per-frame table whose probabilities differ in any bit from the same
    frame's in run `a` (which may hold more frames), out of `b`'s rows, and the largest
    difference."""
    first = _probabilities(a)
    second = _probabilities(b)
    moved = [frame for frame, p in second.items() if first[frame] != p]
    largest = max(
        (abs(x - y) for frame in moved for x, y in zip(first[frame], second[frame])), default=0.0
    )
    return {"moved": len(moved), "rows": len(second), "max_difference": largest}


def _probabilities(out_dir: Path) -> dict[str, tuple[float, float]]:
    # The table's numbers are float32's shortest text, so equal floats are equal bits.
    rows = frame_table.read_frames(out_dir / frame_table.FILES["tsv"])
    return {row.chunk_id + row.frame: (row.p_others, row.p_virus) for row in rows}


def repeat_runs(run: ServedRun, one_chunk_frames: int) -> Callable[[str], dict]:
    """What runs against `run`'s server after its measured run (in `run.out / "run"`): the same
    input again, and its first `one_chunk_frames` frames one chunk per request; the rows of each
    that moved from the measured run."""

    def against(url: str) -> dict:
        again, one_chunk = run.out / "run_again", run.out / "run_one_chunk"
        predict(run.fasta, run.chunk_size, again, url, **client_settings(run))
        prefix = run.out / "prefix.fasta"
        write_prefix(run.fasta, prefix, one_chunk_frames, run.chunk_size)
        one = client_settings(dataclasses.replace(run, batch_chunks=1))
        predict(prefix, run.chunk_size, one_chunk, url, **one)
        return {
            "between_runs": moved_rows(run.out / "run", again),
            "one_chunk_vs_batch_chunks": moved_rows(run.out / "run", one_chunk),
        }

    return against


def invariant_copy(repository: Path, target: Path) -> Path:
    """`repository` at `target` with every entry that has the BATCH_INVARIANT setting switched
    to it. The weights are hard links (ESM-2 3B's are large); the configs are copies."""
    shutil.rmtree(target, ignore_errors=True)

    def link_or_copy(source: str, destination: str) -> None:
        if Path(source).name == "config.pbtxt":
            shutil.copy2(source, destination)
        else:
            try:
                os.link(source, destination)
            except OSError:  # another file system
                shutil.copy2(source, destination)

    shutil.copytree(repository, target, copy_function=link_or_copy)
    names = [
        name
        for name, spec in repo.entry_specs().items()
        if repo.BATCH_INVARIANT in spec.parameters and (target / name).is_dir()
    ]
    set_parameter(target, repo.BATCH_INVARIANT, "true", names)
    return target


def batch_invariance(
    models: dict,
    frames: list,
    run: ServedRun,
    default_repeats: dict,
    device: torch.device,
    one_chunk_frames: int,
) -> dict:
    """Both modes' moved rows and first differing modules, and the batch-invariant mode served
    as `run` was (the embedders' cache off). `default_repeats`: what repeat_runs found on the
    default mode's server."""
    default = first_differences(models, frames, device, False)
    found = {"default": {**default_repeats, "first_difference": default}}
    hooked = first_differences(models, frames, device, True)
    repository = invariant_copy(run.repository, run.out.with_name("repository_invariant"))
    set_embedding_cache(repository, 0)  # as the default mode's runs were served
    invariant = dataclasses.replace(
        run, repository=repository, out=run.out.with_name(run.out.name + "_invariant")
    )
    serve = served(invariant, then=repeat_runs(invariant, one_chunk_frames))
    found["batch_invariant"] = {**serve.pop("then"), "first_difference": hooked, "served": serve}
    return found


@torch.inference_mode()
def first_differences(
    models: dict, frames: list, device: torch.device, batch_invariant: bool
) -> dict[str, dict]:
    """Per embedder, HOOK_ROWS rows of one execute's frames (the first EMBEDDER_MAX_BATCH), each
    run in the batch the entry's embedder puts it in (default: ESM-2 packed on a GPU, DNABERT-S
    padded; batch-invariant: its fixed shape) and alone, with forward hooks on every module:
    the first module, in the order they ran, whose output for that row differs in any bit.
    Eager (hooks do not see inside compiled blocks), so the kernels are eager's."""
    texts = frames[: repo.EMBEDDER_MAX_BATCH]
    embedders = {
        repo.DNABERT_S: (
            DnaEmbedder(
                TorchBackend(models["dnabert"], device),
                models["tokenizer"],
                batch_invariant=batch_invariant,
            ),
            [f.nucleotide for f in texts],
        ),
        repo.ESM2: (
            ProteinEmbedder(TorchBackend(models["esm2"], device), batch_invariant=batch_invariant),
            [f.protein for f in texts],
        ),
    }
    found = {
        name: _first_differences(embedder, seqs) for name, (embedder, seqs) in embedders.items()
    }
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the server about to start takes the memory
    return found


def _first_differences(embedder: DnaEmbedder | ProteinEmbedder, sequences: list[str]) -> dict:
    tokens = embedder.tokenize(sequences)
    batches = embedder.batches([len(t) for t in tokens])
    step = max(1, (len(tokens) - 1) / max(1, HOOK_ROWS - 1))
    probes = sorted({min(len(tokens) - 1, round(k * step)) for k in range(HOOK_ROWS)})
    rows = []
    for index in probes:
        batch, shape = next((b, s) for b, s in batches if index in b)
        in_batch = _traced(embedder, [tokens[i] for i in batch], shape, batch.index(index))
        ((_, alone_shape),) = embedder.batches([len(tokens[index])])
        alone = _traced(embedder, [tokens[index]], alone_shape, 0)
        rows.append(
            {
                "tokens": len(tokens[index]),
                "batch_rows": len(batch),
                "batch_shape": list(shape) if shape else None,  # None: as the backend lays out
                **_compare(*in_batch, *alone),
            }
        )
    firsts = Counter(row["first_module"] for row in rows if row["first_module"])
    return {
        "rows": len(rows),
        "rows_differing": sum(row["embedding_differs"] for row in rows),
        "first_module": firsts.most_common(1)[0][0] if firsts else None,
        "first_modules": dict(firsts),
        "per_row": rows,
    }


@dataclasses.dataclass(frozen=True)
class _Layout:
    """Where row `index` (of `length` tokens) sits in a batch's module outputs: padded [rows,
    width, ...] or packed [tokens, ...] from `start` (width None); per-row outputs [rows, ...]."""

    rows: int
    width: int | None
    tokens: int
    index: int
    start: int
    length: int

    def part(self, output: object) -> torch.Tensor | None:
        if not isinstance(output, torch.Tensor) or output.dim() == 0:
            return None
        if self.width is None and output.shape[0] == self.tokens:
            return output[self.start : self.start + self.length]
        if output.shape[0] != self.rows:
            return None
        row = output[self.index]
        if self.width is not None and row.dim() and row.shape[0] == self.width:
            return row[: self.length]
        return row


def _traced(
    embedder: DnaEmbedder | ProteinEmbedder,
    tokens: list[list[int]],
    shape: tuple[int, int] | None,
    index: int,
) -> tuple[list[tuple[str, list[torch.Tensor | None]]], torch.Tensor]:
    """Row `index`'s part of every module output, in the order the modules ran, and its pooled
    embedding, with `tokens` embedded as one batch of `shape` (see _Embedder.batches)."""
    lengths = [len(t) for t in tokens]
    if shape:
        layout = _Layout(shape[0], shape[1], 0, index, 0, lengths[index])
    elif embedder.backend.packed:
        start = sum(lengths[:index])
        layout = _Layout(len(tokens), None, sum(lengths), index, start, lengths[index])
    else:
        layout = _Layout(len(tokens), max(lengths), 0, index, 0, lengths[index])
    outputs: list[tuple[str, list[torch.Tensor | None]]] = []

    def hook(name: str, _module, _args, output) -> None:
        parts = [layout.part(t) for t in (output if isinstance(output, tuple) else (output,))]
        outputs.append((name, [None if p is None else p.clone() for p in parts]))

    model = embedder.backend.model
    handles = [
        module.register_forward_hook(functools.partial(hook, name or type(model).__name__))
        for name, module in model.named_modules()
    ]
    try:
        vectors = embedder._embed_batch(tokens, pinned=False, shape=shape)
    finally:
        for handle in handles:
            handle.remove()
    return outputs, vectors[index]


def _compare(
    batch_outputs: Sequence[tuple[str, list]],
    batch_vector: torch.Tensor,
    alone_outputs: Sequence[tuple[str, list]],
    alone_vector: torch.Tensor,
) -> dict:
    first, compared = None, 0
    for (name, in_batch), (name_alone, alone) in zip(batch_outputs, alone_outputs, strict=True):
        assert name == name_alone, (name, name_alone)  # the same code ran both
        for x, y in zip(in_batch, alone):
            if x is None or y is None or x.shape != y.shape:
                continue  # not laid out by row (an attention bias, say)
            compared += 1
            if first is None and not torch.equal(x, y):
                first = name
    differs = not torch.equal(batch_vector, alone_vector)
    return {
        "first_module": first or (POOLING if differs else None),
        "modules_compared": compared,
        "embedding_differs": differs,
        "embedding_max_difference": (batch_vector - alone_vector).abs().max().item(),
    }
