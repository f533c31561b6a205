"""CPU smoke run of `make bench`: it completes and reports numbers (no timing assertions).

One chunk size: each size is the same code path with a server start of its own, and the
option that picks the sizes is itself part of what this proves."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from virnucpro_triton.bench import main


def test_bench_smoke_run_reports_both_paths(tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(
        main,
        ["--tiny", "--chunk-size", "300", "--frames", "40"]
        + ["--work-dir", str(tmp_path), "--json-out", str(out)],
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
