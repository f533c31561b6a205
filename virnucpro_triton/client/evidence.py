"""Per-sequence verdicts from the evidence of all chunks (besides VirNucPro's max rule).

Each chunk with a kept frame gives δ = max P(virus) − max P(others) over its kept frames. The
sequence score Σ δ·√|δ| / Σ √|δ| is a mean of the δ weighted by √|δ|: confident chunks count
more than indecisive ones, and one confident chunk does not outvote many opposing ones the way
a max does. It lies in [−1, 1]; the verdict is `viral` above `viral_above`, `nonviral` below
`nonviral_below`, `uncertain` in between (a score equal to a bound too), `no_frames` when
no chunk had a kept frame and `too_short` for a record shorter than `--min-length`, which was
not sent. A sequence with fewer than `min_chunks` such chunks is flagged
low-confidence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from virnucpro_triton.client.outputs import scores as printed

VERDICT_NAMES = ("viral", "nonviral", "uncertain", "no_frames", "too_short")
COLUMNS = ("weighted_score", "verdict", "low_confidence")  # appended to sequence_summary.tsv


@dataclass(frozen=True)
class Thresholds:
    viral_above: float = 0.3
    nonviral_below: float = -0.3
    min_chunks: int = 5

    def __post_init__(self) -> None:
        if not self.viral_above > self.nonviral_below:
            raise ValueError(
                f"the viral threshold ({self.viral_above:g}) must be above the non-viral one "
                f"({self.nonviral_below:g})"
            )
        if self.min_chunks < 0:
            raise ValueError(f"the minimum chunk count must be >= 0, not {self.min_chunks}")

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


DEFAULT_THRESHOLDS = Thresholds()


@dataclass(frozen=True)
class Evidence:
    """The scores of many sequences at once."""

    chunks: np.ndarray  # [sequences] chunks with at least one kept frame
    scores: np.ndarray  # [sequences] float64; NaN where no chunk had one
    too_short: np.ndarray  # [sequences] bool: shorter than --min-length, not classified

    @classmethod
    def of(
        cls,
        maxima: np.ndarray,
        sequence: np.ndarray,
        sequences: int,
        too_short: np.ndarray | None = None,
    ) -> Evidence:
        """From max P(others), max P(virus) [n, 2] of every chunk with a kept frame and the
        sequence (0 .. sequences - 1) each chunk is of, chunks in input order; `too_short`
        marks the sequences that were not sent (they have no chunk)."""
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
        return cls(chunks, scores, short)

    def verdicts(self, thresholds: Thresholds) -> list[str]:
        verdicts = np.array(thresholds.verdicts(self.scores), dtype=object)
        verdicts[self.too_short] = "too_short"
        return verdicts.tolist()

    def columns(self, thresholds: Thresholds) -> list[str]:
        """The summary cells `weighted_score verdict low_confidence` of each sequence,
        tab-separated."""
        texts = np.where(self.chunks == 0, "NA", printed(self.scores)).tolist()
        low = (self.chunks < thresholds.min_chunks).tolist()
        rows = zip(texts, self.verdicts(thresholds), low)
        return [f"{text}\t{verdict}\t{low}" for text, verdict, low in rows]
