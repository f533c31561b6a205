"""CPU smoke run of `make bench` (benchmarks/, outside the wheel): it completes and reports
numbers (no timing assertions), VirNucPro's own way among them; and its workload's copies.

One chunk size: each size is the same code path with a server start of its own, and the
option that picks the sizes is itself part of what this proves. The only test that imports the
benchmark."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from Bio import SeqIO
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/ is not installed
from benchmarks.bench import main  # noqa: E402
from benchmarks.workload import add_duplicates, frames_of, make_workload, write_prefix  # noqa: E402
from virnucpro_triton import repository as repo  # noqa: E402
from virnucpro_triton.sequence import reverse_complement  # noqa: E402


@pytest.mark.server  # the bench starts its own servers
@pytest.mark.slow  # two servers, and the batch-invariant mode's full-size batches on the CPU
def test_bench_smoke_run_reports_every_way(tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(
        main,
        ["--tiny", "--chunk-size", "300", "--frames", "40", "--virnucpro-frames", "30"]
        + ["--one-chunk-frames", "12", "--work-dir", str(tmp_path), "--json-out", str(out)],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert set(report["runs"]) == {"300"}
    (run,) = report["runs"].values()
    assert run["frames"] >= 40
    assert run["in_process"]["frames_per_s"] > 0 and run["served"]["frames_per_s"] > 0
    assert (
        run["served_over_in_process"]
        == run["served"]["frames_per_s"] / run["in_process"]["frames_per_s"]
    )
    assert run["served"]["cold_start_s"] > 0
    # VirNucPro's own way (fair-esm ESM-2, DNABERT-S one at a time, fp32) on the first frames.
    own = run["virnucpro_own"]
    assert own["frames"] == 30 and own["toks_per_batch"] == 2048
    assert own["frames_per_s"] == pytest.approx(30 / own["seconds"])
    assert own["seconds"] == pytest.approx(own["dnabert_s_seconds"] + own["esm2_seconds"])
    assert run["served_over_virnucpro_own"] == run["served"]["frames_per_s"] / own["frames_per_s"]
    # fp32 everywhere: the served entries embed those frames as VirNucPro's way does.
    for entry in (repo.DNABERT_S, repo.ESM2):
        found = own["served_embeddings"][entry]
        assert found["frames"] == 30
        assert found["max_abs_diff"] < 1e-4 and found["min_cosine"] > 0.9999
    table = result.output.splitlines()
    head = next(i for i, line in enumerate(table) if "VirNucPro's own" in line and "/ own" in line)
    assert table[head + 1].split()[:2] == ["300", "bp"]
    # The models alone, as the entries embed, on sets of one execute's frames.
    alone = run["models_alone"]
    assert alone["frames_per_s"] < alone["esm2_frames_per_s"]  # DNABERT-S's time added
    assert 0 < alone["dnabert_s_share"] < 1
    assert alone["frames_per_s"] == pytest.approx(
        1 / (1 / alone["esm2_frames_per_s"] + 1 / alone["dnabert_s_frames_per_s"])
    )
    assert alone["sets"] == -(-run["frames"] // alone["frames_per_set"])
    assert alone["recompilations"] == 0  # nothing is compiled on the CPU
    assert run["served_over_models_alone"] == run["served"]["frames_per_s"] / alone["frames_per_s"]
    assert report["batch_chunks"] == 512  # the README's recommendation for GPU servers
    # The random classifier was balanced: verdict agreement of variants means something.
    assert 0.2 <= run["served"]["virus_share"] <= 0.8
    # fp32 on both paths: frames line up and get the in-process verdicts.
    assert run["served"]["verdict_agreement_with_in_process"] >= 0.95
    assert "served_fp8" not in run  # no GPU with FP8 here
    assert_invariance_reported(run, table[head + 2 :])


def assert_invariance_reported(run: dict, table: list[str]) -> None:
    """Both modes' moved rows and first differing modules, and the batch-invariant mode's
    served frames/s over the default's, in the JSON and in the printed table."""
    found = run["batch_invariance"]
    invariant = found["batch_invariant"]
    # Both modes computed every row (no cache to take a repeated run's embeddings from).
    assert run["served"]["embedding_cache_bytes"] == 0
    assert run["served"]["embedding_cache"] == invariant["served"]["embedding_cache"] == {}
    assert invariant["served"]["frames_per_s"] > 0 and run["invariant_over_default"] > 0
    assert run["invariant_over_default"] == (
        invariant["served"]["frames_per_s"] / run["served"]["frames_per_s"]
    )
    for mode in ("default", "batch_invariant"):
        between, one_chunk = (found[mode][k] for k in ("between_runs", "one_chunk_vs_batch_chunks"))
        assert between["rows"] == run["frames"]
        # --one-chunk-frames: the first records holding at least 12 frames, not all of them.
        assert 12 <= one_chunk["rows"] < run["frames"]
        for moved in (between, one_chunk):
            assert isinstance(moved["moved"], int) and 0 <= moved["moved"] <= moved["rows"]
        for entry in (repo.DNABERT_S, repo.ESM2):
            first = found[mode]["first_difference"][entry]
            assert first["rows"] == len(first["per_row"]) == 4
            assert 0 <= first["rows_differing"] <= first["rows"]
            assert all(row["modules_compared"] > 0 for row in first["per_row"])
    # The mode's proof, on the CPU too: nothing moves, no module computes a row differently.
    assert found["batch_invariant"]["between_runs"]["moved"] == 0
    assert found["batch_invariant"]["one_chunk_vs_batch_chunks"]["moved"] == 0
    for entry in (repo.DNABERT_S, repo.ESM2):
        first = found["batch_invariant"]["first_difference"][entry]
        assert first["rows_differing"] == 0 and first["first_module"] is None
    # The printed table: a row per mode with the same numbers.
    rows = {line.split()[2]: line.split() for line in table if line.startswith("300 bp")}
    assert set(rows) == {"default", "batch-invariant"}
    assert rows["batch-invariant"][4] == f"{run['invariant_over_default']:.2f}x"
    assert rows["batch-invariant"][5:7] == ["0/" + str(run["frames"]), f"0/{one_chunk['rows']}"]
    assert rows["batch-invariant"][7:] == ["none", "none"]


def test_the_bench_adds_the_share_of_copies_asked_half_of_them_reverse_complements(tmp_path):
    source, target = tmp_path / "reads.fa", tmp_path / "copies.fa"
    unique_frames = make_workload(source, 300, 300, seed=3, lengths=(150, 301))
    originals = {str(r.seq) for r in SeqIO.parse(source, "fasta")}
    reads, frames = add_duplicates(source, target, 0.3, 300)
    records = list(SeqIO.parse(target, "fasta"))
    copies = [str(r.seq) for r in records if "_copy" in r.id]
    assert reads == len(records) == len(originals) + len(copies)
    assert abs(len(copies) / reads - 0.3) < 0.01
    exact = sum(c in originals for c in copies)
    reverse = sum(reverse_complement(c) in originals and c not in originals for c in copies)
    assert exact + reverse == len(copies) and abs(exact - reverse) <= 1
    assert frames > len(unique_frames)
    assert len({r.id for r in records}) == reads  # copies have ids of their own


def test_the_one_chunk_run_sends_the_first_records_holding_the_frames_asked(tmp_path):
    source, prefix = tmp_path / "contigs.fa", tmp_path / "prefix.fa"
    make_workload(source, 200, 300)
    records = [(r.id, str(r.seq)) for r in SeqIO.parse(source, "fasta")]
    frames = write_prefix(source, prefix, 30, 300)
    written = [(r.id, str(r.seq)) for r in SeqIO.parse(prefix, "fasta")]
    assert written == records[: len(written)] and len(written) < len(records)
    assert frames == sum(frames_of(name, seq, 300) for name, seq in written)
    # No record more than needed: without the last one, fewer than asked.
    assert frames - frames_of(*written[-1], 300) < 30 <= frames
    # Asked for more than the input holds: all of it.
    assert write_prefix(source, prefix, 10_000, 300) >= 200
    assert len(list(SeqIO.parse(prefix, "fasta"))) == len(records)
