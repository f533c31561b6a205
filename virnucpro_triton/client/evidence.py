"""Per-sequence verdicts from the evidence of all chunks (besides VirNucPro's max rule).

Each chunk with a kept frame gives δ = max P(virus) − max P(others) over its kept frames. The
sequence score Σ δ·√|δ| / Σ √|δ| is a mean of the δ weighted by √|δ|: confident chunks count
more than indecisive ones, and one confident chunk does not outvote many opposing ones the way
a max does. It lies in [−1, 1]; the verdict is `viral` above `viral_above`, `nonviral` below
`nonviral_below`, `uncertain` in between (a score equal to a bound too) and `no_frames` when
no chunk had a kept frame. A sequence with fewer than `min_chunks` such chunks is flagged
low-confidence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from virnucpro_triton.client.outputs import score as printed

VERDICT_NAMES = ("viral", "nonviral", "uncertain", "no_frames")
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

    def verdict(self, score: float | None) -> str:
        """The verdict of a score; None (no evidence at all) is `no_frames`.

        Compared at float32 precision, the precision of the probabilities and of the printed
        score, so the number a user reads decides: a printed 0.3 is uncertain.
        """
        if score is None:
            return "no_frames"
        value = np.float32(score)
        if value > np.float32(self.viral_above):
            return "viral"
        if value < np.float32(self.nonviral_below):
            return "nonviral"
        return "uncertain"


DEFAULT_THRESHOLDS = Thresholds()


class Evidence:
    """The running score of one sequence, fed one chunk at a time; constant memory."""

    def __init__(self) -> None:
        self.chunks = 0  # chunks with at least one kept frame
        self._weighted = 0.0  # Σ δ·√|δ|
        self._weights = 0.0  # Σ √|δ|

    def add(self, p_others_max: float, p_virus_max: float) -> None:
        """One chunk's max P(others) and max P(virus) over its kept frames."""
        delta = p_virus_max - p_others_max
        weight = math.sqrt(abs(delta))
        self.chunks += 1
        self._weighted += delta * weight
        self._weights += weight

    @property
    def score(self) -> float | None:
        """None without any chunk; 0 when every δ is 0 (no evidence either way)."""
        if self.chunks == 0:
            return None
        return self._weighted / self._weights if self._weights else 0.0

    def verdict(self, thresholds: Thresholds) -> str:
        return thresholds.verdict(self.score)

    def low_confidence(self, thresholds: Thresholds) -> bool:
        return self.chunks < thresholds.min_chunks

    def columns(self, thresholds: Thresholds) -> str:
        """The summary cells `weighted_score verdict low_confidence`, tab-separated."""
        text = "NA" if self.score is None else printed(self.score)
        return f"{text}\t{self.verdict(thresholds)}\t{self.low_confidence(thresholds)}"
