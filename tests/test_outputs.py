"""VirNucPro's result formats and the atomic writer."""

from __future__ import annotations

import csv

import pytest
from conftest import PEER

from virnucpro_triton.client.outputs import ChunkVerdicts, atomic_files, prediction_row, score


@pytest.mark.parametrize("name", ["test_fixed_500bp", "test_with_orfs"])
def test_verdicts_reproduce_peer_highestscore_from_peer_predictions(name, tmp_path):
    verdicts = ChunkVerdicts()
    with open(PEER / f"{name}.prediction_results.txt") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            verdicts.add(row["Sequence_ID"], float(row["score1"]), float(row["score2"]))
    with open(tmp_path / "out.csv", "w") as handle:
        verdicts.write(handle)
    expected = (PEER / f"{name}.prediction_results_highestscore.csv").read_text()
    assert (tmp_path / "out.csv").read_text() == expected


def test_peer_prediction_rows_are_reproduced_from_their_numbers():
    lines = (PEER / "test_with_orfs.prediction_results.txt").read_text().splitlines(keepends=True)
    for line in lines[1:]:
        frame_id, _, p_others, p_virus = line.rstrip("\n").split("\t")
        assert prediction_row(frame_id, float(p_others), float(p_virus)) == line


def test_verdicts_sort_like_pandas_groupby_and_break_ties_towards_virus(tmp_path):
    verdicts = ChunkVerdicts()
    verdicts.add("s_chunk_2R3", 0.5, 0.5)  # max P(virus) >= max P(others): True
    verdicts.add("s_chunk_10F1", 0.9, 0.1)
    verdicts.add("s_chunk_10R2", 0.2, 0.8)  # chunk 10: max others 0.9 > max virus 0.8
    with open(tmp_path / "v.csv", "w") as handle:
        verdicts.write(handle)
    assert (tmp_path / "v.csv").read_text() == (
        "Modified_ID\tIs_Virus\ns_chunk_10\tFalse\ns_chunk_2\tTrue\n"
    )


def test_verdicts_spilled_in_sorted_runs_merge_into_one_sorted_file(tmp_path):
    verdicts = ChunkVerdicts(run_size=3)  # force several spilled runs
    expected = []
    for j in range(20, 0, -1):
        for frame, (p_others, p_virus) in zip(["F1", "R2"], [(0.6, 0.4), (0.3, 0.7 - j % 2)]):
            verdicts.add(f"seq_chunk_{j}{frame}", p_others, p_virus)
        expected.append((f"seq_chunk_{j}", max(0.4, 0.7 - j % 2) >= 0.6))
    with open(tmp_path / "v.csv", "w") as handle:
        verdicts.write(handle)
    rows = (tmp_path / "v.csv").read_text().splitlines()[1:]
    assert rows == [f"{c}\t{v}" for c, v in sorted(expected)]


def test_scores_print_as_numpy_float32():
    assert score(0.002076708) == "0.002076708"
    assert score(1e-7) == "1e-07"


def test_failed_run_leaves_no_output_and_keeps_the_previous_one(tmp_path):
    (tmp_path / "a.txt").write_text("previous complete result\n")
    with pytest.raises(RuntimeError):
        with atomic_files(tmp_path, ["a.txt", "b.txt"]) as out:
            out["a.txt"].write("half")
            raise RuntimeError("server went away")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
    assert (tmp_path / "a.txt").read_text() == "previous complete result\n"
    with atomic_files(tmp_path, ["a.txt", "b.txt"]) as out:
        out["a.txt"].write("new")
    assert (tmp_path / "a.txt").read_text() == "new"
    assert (tmp_path / "b.txt").exists()
