"""Per-sequence verdicts from the evidence of all chunks (besides VirNucPro's max rule).

Each chunk with a kept frame gives δ = max P(virus) − max P(others) over its kept frames. The
sequence score Σ δ·√|δ| / Σ √|δ| is a mean of the δ weighted by √|δ|: confident chunks count
more than indecisive ones, and one confident chunk does not outvote many opposing ones the way
a max does. It lies in [−1, 1]; the verdict is `viral` above `viral_above`, `nonviral` below
`nonviral_below`, `uncertain` in between (a score equal to a bound too), `no_frames` when
no chunk had a kept frame and `too_short` for a record shorter than `--min-length`, which was
not sent.

A verdict is flagged low-confidence when it rests on fewer scored chunks (chunks with a kept
frame) than min(`min_chunks`, the chunks the sequence has, at least 1). `min_chunks` asks for
evidence from that many separate stretches; a sequence shorter than `min_chunks` chunks cannot
give more than it has, so it is asked for all of its own: a 150 bp read whose one chunk is
scored is not low-confidence (how confident that chunk is, the thresholds judge), while a
1,000 bp contig with 3 of its 4 chunks scored is. A sequence without any scored chunk (no
frames, too short, empty) is always flagged, unless `min_chunks` is 0, which flags nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from virnucpro_triton.errors import VirnucproError
from virnucpro_triton.results.outputs import scores as printed

VERDICT_NAMES = ("viral", "nonviral", "uncertain", "no_frames", "too_short")


class ThresholdError(VirnucproError, ValueError):
    """Thresholds that contradict each other; the message names them."""


@dataclass(frozen=True)
class Thresholds:
    viral_above: float = 0.3
    nonviral_below: float = -0.3
    min_chunks: int = 5

    def __post_init__(self) -> None:
        if not self.viral_above > self.nonviral_below:
            raise ThresholdError(
                f"the viral threshold ({self.viral_above:g}) must be above the non-viral one "
                f"({self.nonviral_below:g})"
            )
        if self.min_chunks < 0:
            raise ThresholdError(f"the minimum chunk count must be >= 0, not {self.min_chunks}")

    def verdicts(self, scores: np.ndarray) -> list[str]:
        """The verdict of each score; NaN (no evidence at all) is `no_frames`.

        Compared at float32 precision, the precision of the probabilities and of the printed
        score, so the number a user reads decides: a printed 0.3 is uncertain.
        """
        value = np.asarray(scores, np.float32)
        verdict = np.where(value > np.float32(self.viral_above), "viral", "uncertain")
        verdict[value < np.float32(self.nonviral_below)] = "nonviral"
        verdict[np.isnan(value)] = "no_frames"
        return verdict.tolist()

    def low_confidence(self, scored: np.ndarray, possible: np.ndarray) -> np.ndarray:
        """Whether each verdict rests on too few chunks: `scored` chunks with a kept frame out
        of the `possible` chunks of each sequence (see the module's docstring)."""
        required = np.minimum(self.min_chunks, np.maximum(possible, 1))
        return np.asarray(scored) < required


DEFAULT_THRESHOLDS = Thresholds()


@dataclass(frozen=True)
class Evidence:
    """The scores of many sequences at once."""

    chunks: np.ndarray  # [sequences] chunks with at least one kept frame
    scores: np.ndarray  # [sequences] float64; NaN where no chunk had one
    possible: np.ndarray  # [sequences] chunks each sequence has, with a kept frame or not
    too_short: np.ndarray  # [sequences] bool: shorter than --min-length, not classified

    @classmethod
    def of(
        cls,
        maxima: np.ndarray,
        sequence: np.ndarray,
        possible: np.ndarray,
        too_short: np.ndarray | None = None,
    ) -> Evidence:
        """From max P(others), max P(virus) [n, 2] of every chunk with a kept frame, the
        sequence (0 .. sequences - 1) each chunk is of, chunks in input order, and the number
        of chunks of each sequence; `too_short` marks the sequences that were not sent (they
        have no chunk)."""
        possible = np.asarray(possible, int)
        sequences = len(possible)
        delta = maxima[:, 1].astype(np.float64) - maxima[:, 0]
        weight = np.sqrt(np.abs(delta))
        weighted, weights = np.zeros(sequences), np.zeros(sequences)
        # ufunc.at adds one term after the other in the given order: the same sums, to the
        # last bit, as running totals over each sequence's chunks (the printed score is stable).
        np.add.at(weighted, sequence, delta * weight)
        np.add.at(weights, sequence, weight)
        chunks = np.bincount(sequence, minlength=sequences)
        # 0 when every δ is 0 (no evidence either way), NaN without any chunk
        scores = np.divide(weighted, weights, out=np.zeros(sequences), where=weights > 0)
        scores[chunks == 0] = np.nan
        short = np.zeros(sequences, bool) if too_short is None else np.asarray(too_short, bool)
        return cls(chunks, scores, possible, short)

    def verdicts(self, thresholds: Thresholds) -> list[str]:
        verdicts = np.array(thresholds.verdicts(self.scores), dtype=object)
        verdicts[self.too_short] = "too_short"
        return verdicts.tolist()

    def columns(self, thresholds: Thresholds) -> list[str]:
        """The summary cells `weighted_score verdict low_confidence` of each sequence,
        tab-separated."""
        texts = np.where(self.chunks == 0, "NA", printed(self.scores)).tolist()
        low = thresholds.low_confidence(self.chunks, self.possible).tolist()
        rows = zip(texts, self.verdicts(thresholds), low)
        return [f"{text}\t{verdict}\t{low}" for text, verdict, low in rows]
