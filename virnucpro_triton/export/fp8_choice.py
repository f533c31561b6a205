"""Which of ESM-2's linear layers may run in FP8: decided at export, on the weights exported.

The rule: against the same entry in bf16, on the probe frames that ship with the package
(fp8_probe.fasta.gz: viral and non-viral RefSeq/GenBank sequences, rebuilt by
scripts/make_fp8_probe.py), the pooled ESM-2 embeddings keep cosine >= 0.999 on every frame, and the
frames' verdicts (through the repository's own DNABERT-S and classifiers) agree on >= 99.5%.

`auto` puts each layer alone in FP8, orders the layers by how far that moves the embeddings per
multiply it takes off bf16 (least first) and bisects for the longest prefix of that order that
keeps the rule: about one pass per layer on a quarter of the probe, then log2(layers) passes
on all of it. A named setting (feed_forward, all, a list) is measured as given and refused when
it misses. Where this machine's GPU has no FP8 the arithmetic is emulated (the same e4m3 values
and scales, products in fp32): the numbers are those of the quantization, which is what the rule
is about.
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from Bio import SeqIO

from virnucpro_triton import repository as repo
from virnucpro_triton.backends.torch_backend import TorchBackend, fp8_layers
from virnucpro_triton.errors import VirnucproError
from virnucpro_triton.models.esm2 import Esm2
from virnucpro_triton.models.fp8 import (
    fp8_unavailable,
    linear_layers,
    swap_layers,
    to_fp8,
)
from virnucpro_triton.sequence import Frame, six_frames
from virnucpro_triton.sequence_embedders import DnaEmbedder, ProteinEmbedder

# The rule, against the entry in bf16 (not fp32, which the bf16 entry itself is checked on).
MIN_COSINE, MIN_AGREEMENT = 0.999, 0.995
PROBE = "fp8_probe.fasta.gz"
# Windows of each chunk size every WINDOW_STEP bases of the probe sequences: ~1,900 frames for
# the 300 and 500 bp classifiers, enough that one flipped verdict in 200 is seen.
WINDOW_STEP = 25
# Layers are ranked (Probe.sensitivity) on every 4th probe frame: one pass per layer.
RANKING_STRIDE = 4


class Fp8Refused(VirnucproError, RuntimeError):
    """An FP8 setting that missed the rule, or that could not be checked; nothing was written."""


@dataclass(frozen=True)
class Fp8Check:
    layers: tuple[str, ...]
    of: int  # linear layers in the model
    frames: int
    min_cosine: float
    agreement: float
    where: str  # "emulated" or the GPU's name

    def passed(self) -> bool:
        return self.min_cosine >= MIN_COSINE and self.agreement >= MIN_AGREEMENT

    def describe(self) -> str:
        return (
            f"FP8 on {len(self.layers)} of {self.of} linear layers: min cosine "
            f"{self.min_cosine:.5f} to bf16 (rule >= {MIN_COSINE}), verdicts agree on "
            f"{self.agreement:.2%} (rule >= {MIN_AGREEMENT:.1%}) of {self.frames} probe frames, "
            f"{self.where}"
        )


def probe_frames(chunk_size: int) -> list[Frame]:
    """The kept frames of the probe's windows of `chunk_size` bases, in file order."""
    with resources.files(__package__).joinpath(PROBE).open("rb") as raw:
        records = list(SeqIO.parse(gzip.open(raw, "rt"), "fasta"))
    frames = []
    for record in records:
        sequence = str(record.seq)
        for start in range(0, len(sequence) - chunk_size + 1, WINDOW_STEP):
            frames += filter(None, six_frames(sequence[start : start + chunk_size]))
    return frames


class Probe:
    """The probe frames of every chunk size the repository classifies, with everything but
    ESM-2 computed once: DNABERT-S's features, and ESM-2's bf16 embeddings and verdicts."""

    def __init__(self, repository: Path, model: Esm2, device: torch.device):
        sizes = repo.classifier_sizes(repository)
        dna_entry = repository / repo.DNABERT_S / "1"
        if not sizes or not (dna_entry / repo.ARCHITECTURE).is_file():
            raise Fp8Refused(
                f"FP8 is verified on verdicts, which need the {repo.DNABERT_S} entry and a "
                f"classifier in {repository}: export them first, or in the same command"
            )
        dna = DnaEmbedder(
            TorchBackend(_load(dna_entry, device), device), dna_entry / repo.TOKENIZER
        )
        self.model, self.device = model, device
        self.emulate = fp8_unavailable(device) is not None
        self.where = "emulated" if self.emulate else f"on {torch.cuda.get_device_name(device)}"
        self.proteins, self.dna, self.classifiers = {}, {}, {}
        for size in sizes:
            frames = probe_frames(size)
            self.proteins[size] = [f.protein for f in frames]
            self.dna[size] = dna([f.nucleotide for f in frames])
            entry = repository / repo.classifier_name(size) / "1"
            self.classifiers[size] = _load(entry, device)
        self.reference = self._embed()
        self.verdicts = self._verdicts(self.reference)

    def _embed(self, layers: Sequence[str] = (), stride: int = 1) -> dict[int, np.ndarray]:
        """ESM-2's embeddings of every `stride`-th probe frame, `layers` in FP8 (put back to
        bf16 afterwards)."""
        originals = to_fp8(self.model, list(layers), self.emulate)
        try:
            embed = ProteinEmbedder(TorchBackend(self.model, self.device))
            return {size: embed(proteins[::stride]) for size, proteins in self.proteins.items()}
        finally:
            swap_layers(self.model, originals)

    @torch.inference_mode()
    def _verdicts(self, embeddings: dict[int, np.ndarray]) -> np.ndarray:
        """Per frame, all chunk sizes in turn: called virus?"""
        verdicts = []
        for size, protein in embeddings.items():
            features = torch.from_numpy(np.concatenate([self.dna[size], protein], axis=1))
            p = self.classifiers[size](features.to(self.device)).cpu().numpy()
            verdicts.append(p[:, 1] > p[:, 0])
        return np.concatenate(verdicts)

    def measure(self, layers: list[str]) -> Fp8Check:
        """The rule's numbers with `layers` in FP8."""
        embeddings = self._embed(layers)
        cosine = min(_cosines(self.reference[size], got).min() for size, got in embeddings.items())
        agreement = float(np.mean(self._verdicts(embeddings) == self.verdicts))
        return self._check(layers, cosine, agreement)

    def _check(self, layers: list[str], cosine: float, agreement: float) -> Fp8Check:
        frames = len(self.verdicts)
        return Fp8Check(
            tuple(layers), len(linear_layers(self.model)), frames, cosine, agreement, self.where
        )

    def sensitivity(self) -> list[str]:
        """The linear layers, least disturbing per weight first: each alone in FP8, by the mean
        of 1 - cosine of the embeddings of every RANKING_STRIDE-th probe frame, over its weights.
        A layer's own rounding error says little: what matters is how far it carries to the
        embedding. Per weight, because FP8's gain is the layer's multiplies: ranked by
        disturbance alone, the longest passing run holds many layers that save little
        (docs/performance.md)."""
        names = linear_layers(self.model)

        def disturbance_per_weight(name: str) -> float:
            got = self._embed([name], RANKING_STRIDE)
            disturbance = max(
                1 - _cosines(self.reference[size][::RANKING_STRIDE], vectors).mean()
                for size, vectors in got.items()
            )
            return disturbance / self.model.get_submodule(name).weight.numel()

        return sorted(names, key=disturbance_per_weight)

    def longest_passing(self) -> tuple[Fp8Check, Fp8Check | None]:
        """The longest prefix of sensitivity() that keeps the rule (bisected), and the check of
        the shortest prefix found to miss it (None when every layer passes)."""
        order = self.sensitivity()
        everything = self.measure(order)
        if everything.passed():
            return everything, None
        passing, missing = self._check([], 1.0, 1.0), everything  # no FP8: bf16 itself
        while len(missing.layers) - len(passing.layers) > 1:
            middle = self.measure(order[: (len(passing.layers) + len(missing.layers)) // 2])
            if middle.passed():
                passing = middle
            else:
                missing = middle
        return passing, missing


def _load(version: Path, device: torch.device) -> torch.nn.Module:
    try:
        return repo.load_model(version, device)[0]
    except ValueError as error:  # an ONNX-format entry: FP8's check runs the torch models
        raise Fp8Refused(f"FP8 is verified through the torch models: {error}") from error


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = torch.from_numpy(a).double(), torch.from_numpy(b).double()
    return torch.cosine_similarity(a, b, dim=-1).numpy()


def choose_fp8(
    setting: str, model: Esm2, repository: Path, device: torch.device
) -> tuple[str, str]:
    """The `fp8` setting to write for a bf16 `model` (on `device`) and what export verified.

    `setting` auto: the layers that keep the rule (FP8_NONE when none does). Any other setting:
    itself, or Fp8Refused with the numbers when it misses the rule."""
    probe = Probe(repository, model, device)
    if setting == repo.FP8_AUTO:
        chosen, missed = probe.longest_passing()
        verified = chosen.describe()
        if missed is not None:
            verified += f"; with {missed.layers[-1]} too it missed: {missed.describe()}"
        return ",".join(chosen.layers) or repo.FP8_NONE, verified
    check = probe.measure(fp8_layers(setting, model))
    if not check.passed():
        raise Fp8Refused(
            f"refused to write esm2 with fp8 {setting}: {check.describe()}. Export with "
            f"--fp8 {repo.FP8_AUTO} to keep the layers that pass, or without --fp8"
        )
    return setting, check.describe()
