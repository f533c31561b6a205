"""VirNucPro's result formats and the atomic writer."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from reference import PEER

from virnucpro_triton.results.outputs import (
    ChunkVerdicts,
    OutputError,
    atomic_files,
    prediction_rows,
    remove_stale,
    scores,
)


@pytest.mark.parametrize("name", ["test_fixed_500bp", "test_with_orfs"])
def test_verdicts_reproduce_peer_highestscore_from_peer_predictions(name, tmp_path):
    maxima: dict[str, np.ndarray] = {}  # VirNucPro's chunks: frame ids minus 2 characters
    with open(PEER / f"{name}.prediction_results.txt") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            frame = np.float32([row["score1"], row["score2"]])
            chunk = row["Sequence_ID"][:-2]
            maxima[chunk] = np.fmax(maxima.get(chunk, frame), frame)
    verdicts = ChunkVerdicts()
    verdicts.add(list(maxima), np.array(list(maxima.values())))
    with open(tmp_path / "out.csv", "w") as handle:
        verdicts.write(handle)
    expected = (PEER / f"{name}.prediction_results_highestscore.csv").read_text()
    assert (tmp_path / "out.csv").read_text() == expected


def test_peer_prediction_rows_are_reproduced_from_their_numbers():
    lines = (PEER / "test_with_orfs.prediction_results.txt").read_text().splitlines(keepends=True)
    frame_ids, _, p_others, p_virus = zip(*(line.rstrip("\n").split("\t") for line in lines[1:]))
    rows = prediction_rows(list(frame_ids), np.float32(p_others), np.float32(p_virus))
    assert rows == lines[1:]


def test_verdicts_sort_like_pandas_groupby_and_break_ties_towards_virus(tmp_path):
    verdicts = ChunkVerdicts()
    # chunk 2: max P(virus) = max P(others): True; chunk 10: max others 0.9 > max virus 0.8
    verdicts.add(["s_chunk_2", "s_chunk_10"], np.float32([[0.5, 0.5], [0.9, 0.8]]))
    with open(tmp_path / "v.csv", "w") as handle:
        verdicts.write(handle)
    assert (tmp_path / "v.csv").read_text() == (
        "Modified_ID\tIs_Virus\ns_chunk_10\tFalse\ns_chunk_2\tTrue\n"
    )


def test_verdicts_spilled_in_sorted_runs_merge_into_one_sorted_file(tmp_path):
    verdicts = ChunkVerdicts(run_size=3)  # force several spilled runs
    expected = []
    for j in range(20, 0, -2):  # two chunks per call, out of order
        ids = [f"seq_chunk_{j}", f"seq_chunk_{j - 1}"]
        maxima = np.float32([[0.6, 0.7 - j % 3 / 3], [0.6, 0.4]])
        verdicts.add(ids, maxima)
        expected += zip(ids, (maxima[:, 1] >= maxima[:, 0]).tolist())
    with open(tmp_path / "v.csv", "w") as handle:
        verdicts.write(handle)
    rows = (tmp_path / "v.csv").read_text().splitlines()[1:]
    assert rows == [f"{c}\t{v}" for c, v in sorted(expected)]
    assert {v for _, v in expected} == {True, False}


def test_scores_print_as_numpy_float32():
    assert scores([0.002076708, 1e-7]) == ["0.002076708", "1e-07"]
    bits = np.random.default_rng(0).integers(0, 2**32, 20_000, dtype=np.uint64)
    values = bits.astype(np.uint32).view(np.float32)
    values = np.concatenate([values[np.isfinite(values)], np.float32([0, 1, 1e-4, 1e16, 0.5])])
    assert scores(values) == [str(v) for v in values]  # str() of each numpy float32


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


def test_a_failed_run_takes_back_the_directory_it_created_only(tmp_path):
    for existed in [False, True]:
        directory = tmp_path / f"existed_{existed}" / "out"
        if existed:
            directory.mkdir(parents=True)
        with pytest.raises(RuntimeError):
            with atomic_files(directory, ["a.txt"]) as out:
                out["a.txt"].write("half")
                raise RuntimeError("bad record")
        assert directory.exists() == existed
        assert not directory.exists() or list(directory.iterdir()) == []


def test_stale_files_of_the_program_go_and_foreign_files_stay(tmp_path):
    for name in ["prediction_results.jsonl", "report.html", "run.json", "mine.txt"]:
        (tmp_path / name).write_text("x")
    owned = ["prediction_results.txt", "prediction_results.jsonl", "report.html", "run.json"]
    remove_stale(tmp_path, owned, keep={"prediction_results.txt", "run.json"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt", "run.json"]


def test_a_directory_where_a_result_goes_stops_the_commit_before_any_rename(tmp_path):
    (tmp_path / "a.txt").write_text("previous a\n")
    (tmp_path / "b.txt").mkdir()
    with pytest.raises(
        OutputError, match=f"^{tmp_path / 'b.txt'} is a directory, where the result"
    ):
        with atomic_files(tmp_path, ["a.txt", "b.txt"]) as out:
            out["a.txt"].write("new a\n")
            out["b.txt"].write("new b\n")
    assert (tmp_path / "a.txt").read_text() == "previous a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]  # no .partial


def test_a_rename_that_fails_midway_puts_the_older_set_back(tmp_path):
    for name in ["a.txt", "b.txt"]:
        (tmp_path / name).write_text(f"previous {name}\n")
    # b.txt cannot be set aside: its older file would go where a directory stands.
    (tmp_path / ".b.txt.previous").mkdir()
    (tmp_path / ".b.txt.previous" / "x").write_text("x")
    with pytest.raises(OSError):
        with atomic_files(tmp_path, ["a.txt", "b.txt"]) as out:
            out["a.txt"].write("new a\n")
            out["b.txt"].write("new b\n")
    for name in ["a.txt", "b.txt"]:
        assert (tmp_path / name).read_text() == f"previous {name}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".b.txt.previous", "a.txt", "b.txt"]


def test_planted_scratch_symlinks_are_replaced_never_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("not the run's\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".a.txt.partial").symlink_to(victim)
    (out / ".a.txt.previous").symlink_to(victim)
    (out / "a.txt").write_text("previous a\n")
    with atomic_files(out, ["a.txt"]) as files:
        files["a.txt"].write("new a\n")
    assert victim.read_text() == "not the run's\n"
    assert (out / "a.txt").read_text() == "new a\n" and not (out / "a.txt").is_symlink()
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"]
