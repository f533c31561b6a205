"""The weighted-evidence verdict of a sequence, against hand-computed examples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from virnucpro_triton.client.evidence import DEFAULT_THRESHOLDS, Evidence, Thresholds


def evidence(*chunks: tuple[float, float]) -> Evidence:
    """The evidence of one sequence from (max P(others), max P(virus)) per chunk."""
    return Evidence.of(np.array(chunks, float).reshape(-1, 2), np.zeros(len(chunks), int), 1)


def test_two_chunks_score_by_hand():
    # δ = 0.64 and −0.09, so √|δ| = 0.8 and 0.3: (0.64·0.8 − 0.09·0.3) / (0.8 + 0.3) = 0.4409…
    result = evidence((0.18, 0.82), (0.545, 0.455))
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
    assert result.columns(DEFAULT_THRESHOLDS) == ["0.3\tuncertain\tTrue"]


def test_settable_thresholds():
    result = evidence((0.18, 0.82), (0.545, 0.455))  # 0.4409…
    assert result.verdicts(Thresholds(viral_above=0.5, nonviral_below=-0.5)) == ["uncertain"]
    assert result.verdicts(Thresholds(viral_above=0.6, nonviral_below=0.45)) == ["nonviral"]
    assert result.columns(Thresholds(min_chunks=2))[0].endswith("\tFalse")  # low confidence
    assert result.columns(Thresholds(min_chunks=3))[0].endswith("\tTrue")


def test_low_confidence_below_min_chunks():
    assert evidence(*[(0.1, 0.9)] * 4).columns(DEFAULT_THRESHOLDS) == ["0.8\tviral\tTrue"]
    assert evidence(*[(0.1, 0.9)] * 5).columns(DEFAULT_THRESHOLDS) == ["0.8\tviral\tFalse"]
    assert evidence().columns(Thresholds(min_chunks=0)) == ["NA\tno_frames\tFalse"]


def test_no_chunk_with_a_frame_is_na_and_no_frames():
    result = evidence()
    assert np.isnan(result.scores[0])
    assert result.columns(DEFAULT_THRESHOLDS) == ["NA\tno_frames\tTrue"]


def test_balanced_to_nothing_is_zero_and_uncertain():
    result = evidence((0.5, 0.5), (0.5, 0.5))
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
    together = Evidence.of(maxima, sequence, len(chunks))
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
    assert Evidence.of(maxima, sequence, 7).scores.tolist() == expected
