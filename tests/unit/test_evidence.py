"""The weighted-evidence verdict of a sequence, against hand-computed examples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from virnucpro_triton.results.evidence import DEFAULT_THRESHOLDS, Evidence, Thresholds
from virnucpro_triton.sequence import chunk_starts


def evidence(*chunks: tuple[float, float], length: int | None = None) -> Evidence:
    """The evidence of one sequence from (max P(others), max P(virus)) per scored chunk; the
    sequence is `length` bp long in 300 bp chunks (default: as many chunks as are scored)."""
    possible = len(chunks) if length is None else len(chunk_starts(length, 300))
    maxima = np.array(chunks, float).reshape(-1, 2)
    return Evidence.of(maxima, np.zeros(len(chunks), int), [possible])


def test_two_chunks_score_by_hand():
    # δ = 0.64 and −0.09, so √|δ| = 0.8 and 0.3: (0.64·0.8 − 0.09·0.3) / (0.8 + 0.3) = 0.4409…
    result = evidence((0.18, 0.82), (0.545, 0.455), length=3000)  # 2 of 10 chunks scored
    assert result.scores[0] == pytest.approx(0.485 / 1.1, abs=1e-12)
    assert result.chunks[0] == 2
    assert result.columns(DEFAULT_THRESHOLDS) == ["0.4409091\tviral\tTrue"]


def test_one_confident_chunk_does_not_outvote_three_opposing_ones():
    # δ = 0.9, −0.4 ×3, 0: √0.9 = 3/√10, √0.4 = 2/√10, so the score is
    # (0.9·3 − 3·0.4·2) / (3 + 3·2) = 0.3 / 9 = 1/30. VirNucPro's max rule would say virus.
    result = evidence((0.05, 0.95), (0.7, 0.3), (0.7, 0.3), (0.7, 0.3), (0.5, 0.5))
    assert result.scores[0] == pytest.approx(1 / 30, abs=1e-12)
    assert result.chunks[0] == 5  # the δ = 0 chunk weighs nothing but counts as a chunk
    assert result.columns(DEFAULT_THRESHOLDS) == ["0.033333335\tuncertain\tFalse"]


def test_strongly_nonviral_sequence():
    result = evidence(*[(0.9, 0.1)] * 6)
    assert result.scores[0] == pytest.approx(-0.8)
    assert result.columns(DEFAULT_THRESHOLDS) == ["-0.8\tnonviral\tFalse"]


@pytest.mark.parametrize(
    ("score", "verdict"),
    [
        (0.3, "uncertain"),
        (-0.3, "uncertain"),
        (0.0, "uncertain"),
        (0.3000001, "viral"),
        (-0.3000001, "nonviral"),
        (1.0, "viral"),
        (-1.0, "nonviral"),
        (None, "no_frames"),
    ],
)
def test_thresholds_are_exclusive(score, verdict):
    assert DEFAULT_THRESHOLDS.verdicts([np.nan if score is None else score]) == [verdict]


def test_printed_score_decides_at_the_boundary():
    # 0.65 − 0.35 is 0.30000000000000004 in binary floating point; it prints as 0.3 and a
    # printed 0.3 is uncertain, so the verdict must agree with what the user reads.
    result = evidence((0.35, 0.65))
    assert result.scores[0] > 0.3
    assert result.columns(DEFAULT_THRESHOLDS) == ["0.3\tuncertain\tFalse"]


def test_settable_thresholds():
    result = evidence((0.18, 0.82), (0.545, 0.455), length=3000)  # 0.4409…
    assert result.verdicts(Thresholds(viral_above=0.5, nonviral_below=-0.5)) == ["uncertain"]
    assert result.verdicts(Thresholds(viral_above=0.6, nonviral_below=0.45)) == ["nonviral"]
    assert result.columns(Thresholds(min_chunks=2))[0].endswith("\tFalse")  # low confidence
    assert result.columns(Thresholds(min_chunks=3))[0].endswith("\tTrue")


def test_a_read_with_its_one_chunk_scored_is_not_low_confidence():
    # 150 bp at 300 bp chunks: one chunk, scored, δ = 0.8: the score is δ; min(5, 1) = 1 met
    assert evidence((0.1, 0.9), length=150).columns(DEFAULT_THRESHOLDS) == ["0.8\tviral\tFalse"]
    assert evidence((0.4, 0.6), length=150).columns(DEFAULT_THRESHOLDS) == [
        "0.2\tuncertain\tFalse"  # an unconfident chunk is the verdict's to judge
    ]
    assert evidence(length=150).columns(DEFAULT_THRESHOLDS) == ["NA\tno_frames\tTrue"]
    assert evidence(length=0).columns(DEFAULT_THRESHOLDS) == ["NA\tno_frames\tTrue"]


@pytest.mark.parametrize(
    ("length", "scored", "low"),
    [
        (450, 2, False),  # 2 chunks, both scored: min(5, 2) = 2 met
        (450, 1, True),
        (1000, 4, False),  # ⌈1000/300⌉ = 4 chunks: min(5, 4) = 4
        (1000, 3, True),  # one chunk had a stop in all six frames
        (1500, 5, False),
        (3000, 5, False),  # 10 chunks: min(5, 10) = 5 met
        (3000, 4, True),
        (30_000, 99, False),
    ],
)
def test_low_confidence_asks_min_chunks_or_every_chunk_a_contig_has(length, scored, low):
    result = evidence(*[(0.1, 0.9)] * scored, length=length)
    assert result.columns(DEFAULT_THRESHOLDS) == [f"0.8\tviral\t{low}"]


def test_min_chunks_zero_flags_nothing_and_too_short_is_flagged():
    assert evidence(length=500).columns(Thresholds(min_chunks=0)) == ["NA\tno_frames\tFalse"]
    short = Evidence.of(np.empty((0, 2)), np.empty(0, int), [0], too_short=[True])
    assert short.columns(DEFAULT_THRESHOLDS) == ["NA\ttoo_short\tTrue"]
    assert short.columns(Thresholds(min_chunks=0)) == ["NA\ttoo_short\tFalse"]


def test_no_chunk_with_a_frame_is_na_and_no_frames():
    result = evidence()
    assert np.isnan(result.scores[0])
    assert result.columns(DEFAULT_THRESHOLDS) == ["NA\tno_frames\tTrue"]


def test_balanced_to_nothing_is_zero_and_uncertain():
    result = evidence((0.5, 0.5), (0.5, 0.5), length=3000)
    assert result.scores[0] == 0.0
    assert result.columns(DEFAULT_THRESHOLDS) == ["0.0\tuncertain\tTrue"]


@pytest.mark.parametrize(
    ("above", "below", "min_chunks"), [(0.3, 0.3, 5), (-0.5, 0.5, 5), (0.3, -0.3, -1)]
)
def test_invalid_thresholds_are_refused(above, below, min_chunks):
    with pytest.raises(ValueError):
        Thresholds(above, below, min_chunks)


def test_many_sequences_at_once_score_as_each_alone():
    chunks = [[(0.18, 0.82), (0.545, 0.455)], [], [(0.9, 0.1)] * 6, [(0.05, 0.95), (0.7, 0.3)]]
    sequence = np.repeat(np.arange(len(chunks)), [len(c) for c in chunks])
    maxima = np.array([c for cs in chunks for c in cs])
    together = Evidence.of(maxima, sequence, [len(c) for c in chunks])
    alone = [evidence(*c) for c in chunks]
    assert together.chunks.tolist() == [2, 0, 6, 2]
    assert together.columns(DEFAULT_THRESHOLDS) == [e.columns(DEFAULT_THRESHOLDS)[0] for e in alone]
    np.testing.assert_array_equal(together.scores, [e.scores[0] for e in alone])


def test_scores_are_running_sums_to_the_last_bit():
    # Summing in another order (pairwise, as numpy's sum does) moves the last bits, and now and
    # then a printed score: the sums must run over each sequence's chunks in order.
    rng = np.random.default_rng(0)
    maxima = rng.random((500, 2)).astype(np.float32)
    sequence = np.sort(rng.integers(0, 7, 500))
    expected = []
    for s in range(7):
        weighted = weights = 0.0
        for p_others, p_virus in maxima[sequence == s].tolist():
            delta = p_virus - p_others
            weighted += delta * math.sqrt(abs(delta))
            weights += math.sqrt(abs(delta))
        expected.append(weighted / weights)
    assert Evidence.of(maxima, sequence, np.bincount(sequence)).scores.tolist() == expected
