"""Weighted verdicts in a real run, run.json, and the HTML report made from a run's outputs.

The page is checked as a browser would need it (HTML that parses with every tag closed, nothing
loaded from elsewhere, images that decode to pictures with something drawn on them) here, and in
a real headless Chromium in test_report_browser.py.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from reference import read_rows
from report_runs import TOP, run_and_report, summary_rows

from virnucpro_triton.results import frame_table, report
from virnucpro_triton.results.evidence import DEFAULT_THRESHOLDS
from virnucpro_triton.results.outputs import PREDICTIONS, SUMMARY, VERDICTS, VIRUSES
from virnucpro_triton.results.report import REPORT, write_report

CLI = str(Path(sys.executable).parent / "virnucpro-triton")


class Page(HTMLParser):
    """Parses a page, checking that every element is closed in order."""

    VOID = {"meta", "img", "br", "hr", "link", "input", "source"}

    def __init__(self, text: str) -> None:
        super().__init__()
        self.open: list[str] = []
        self.tags: set[str] = set()
        self.urls: list[str] = []  # every attribute that loads something
        self.links: list[str] = []  # where <a> elements lead
        self.scripts: list[dict] = []  # attributes of each <script>
        self.tables: list[list[list[str]]] = []  # table -> row -> cell text (th and td)
        self._cell: list[str] | None = None
        self.feed(text)
        self.close()
        assert self.open == [], f"unclosed: {self.open}"

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        if tag == "a":
            self.links += [v for k, v in attrs if k == "href"]
        else:
            self.urls += [v for k, v in attrs if k in {"src", "href", "srcset", "data", "poster"}]
        if tag == "script":
            self.scripts.append(dict(attrs))
        if tag not in self.VOID:
            self.open.append(tag)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        assert self.open and self.open.pop() == tag, f"</{tag}> closes {self.open[-1:]}"
        if tag in ("td", "th"):
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None

    def table(self, first_header: str) -> list[list[str]]:
        """The rows (header row left out) of the table whose first header cell is given."""
        (rows,) = [t[1:] for t in self.tables if t and t[0][:1] == [first_header]]
        return rows

    def cells(self) -> list[str]:
        return [c for t in self.tables for row in t for c in row]

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def images(self) -> list[Image.Image]:
        prefix = "data:image/png;base64,"
        return [Image.open(io.BytesIO(base64.b64decode(u[len(prefix) :]))) for u in self.urls]


def test_summary_verdicts_follow_the_frames_of_the_run(run):
    frames = read_rows(run)  # frame id -> (label, P(others), P(virus))
    chunks: dict[str, dict[str, list[float]]] = defaultdict(dict)
    for frame_id, (_, p_others, p_virus) in frames.items():
        chunk = chunks[frame_id[:-2].rpartition("_chunk_")[0]].setdefault(frame_id[:-2], [0, 0])
        chunk[0], chunk[1] = max(chunk[0], p_others), max(chunk[1], p_virus)
    rows = summary_rows(run)
    assert list(rows[0]) == [
        "id",
        "length",
        "chunks",
        "chunks_without_frame",
        "chunks_virus",
        "max_p_virus",
        "weighted_score",
        "verdict",
        "low_confidence",
    ]
    for row in rows:
        deltas = [p_virus - p_others for p_others, p_virus in chunks[row["id"]].values()]
        assert int(row["chunks"]) - int(row["chunks_without_frame"]) == len(deltas), row
        assert row["low_confidence"] == str(len(deltas) < min(5, max(int(row["chunks"]), 1)))
        if not deltas:
            assert (row["weighted_score"], row["verdict"]) == ("NA", "no_frames"), row
            continue
        weights = [math.sqrt(abs(d)) for d in deltas]
        expected = sum(d * w for d, w in zip(deltas, weights)) / sum(weights)
        assert float(row["weighted_score"]) == pytest.approx(expected, abs=1e-6), row
        assert [row["verdict"]] == DEFAULT_THRESHOLDS.verdicts([float(row["weighted_score"])])
    by_id = {r["id"]: r for r in rows}
    assert by_id["tiny"]["verdict"] == by_id["empty"]["verdict"] == "no_frames"
    assert by_id["tiny"]["chunks_without_frame"] == "1"


def test_run_json_holds_settings_counts_and_throughput(run):
    info = json.loads((run / "run.json").read_text())
    assert info["settings"] == {
        **info["settings"],
        "chunk_size": 300,
        "format": "tsv",
        "batch_chunks": 256,
        "max_in_flight": 1,
        "viral_above": 0.3,
        "nonviral_below": -0.3,
        "min_chunks": 5,
    }
    rows = summary_rows(run)
    counts = info["counts"]
    assert counts["records"] == len(rows) == 18
    assert counts["frames"] == len(read_rows(run))
    assert counts["chunks"] == sum(int(r["chunks"]) for r in rows)
    tally = {v: sum(r["verdict"] == v for r in rows) for v in counts["verdicts"]}
    assert counts["verdicts"] == tally and sum(tally.values()) == len(rows)
    assert info["wall_seconds"] > 0
    assert info["frames_per_second"] == pytest.approx(
        counts["frames"] / info["wall_seconds"], rel=0.01
    )
    assert info["versions"]["virnucpro-triton"] and info["versions"]["python"]


def test_report_is_self_contained_html(run):
    text = (run / REPORT).read_text()
    assert text.startswith("<!DOCTYPE html>")
    page = Page(text)
    assert {"html", "head", "body", "title", "table", "img", "script"} <= page.tags
    assert not page.tags & {"link", "iframe", "object", "embed"}
    assert page.scripts == [{}]  # one inline script, no src
    assert "url(" not in text.split("</style>")[0]  # no stylesheet loads anything
    assert page.urls and all(u.startswith("data:image/png;base64,") for u in page.urls)
    # verdicts, two histograms, score by length, one track per top sequence
    assert len(page.urls) == 4 + TOP
    # links to the run's files beside the page, and nowhere else
    assert page.links == [PREDICTIONS, VERDICTS, SUMMARY, VIRUSES, "run.json"]
    assert all((run / name).is_file() for name in page.links)


def test_report_images_are_pictures_with_something_drawn(run):
    for image in Page((run / REPORT).read_text()).images():
        image.load()
        assert image.format == "PNG" and image.width >= 400 and image.height >= 150
        gray = np.asarray(image.convert("L"))
        assert (gray < 200).mean() > 0.01, "blank picture"  # axes, labels, bars, lines


def test_report_states_verdicts_throughput_and_top_sequences(run):
    info = json.loads((run / "run.json").read_text())
    page = Page((run / REPORT).read_text())
    verdicts = dict(page.table("verdict"))
    for verdict, n in info["counts"]["verdicts"].items():
        assert verdicts[verdict] == f"{n:,}"
    assert f"{info['frames_per_second']:,.1f}" in page.cells()
    assert f"{info['chunks_per_second']:,.1f}" in page.cells()
    rows = [r for r in summary_rows(run) if r["low_confidence"] == "False"]
    assert 0 < len(rows) < len(summary_rows(run))  # the top list leaves some out
    ranked = sorted(
        enumerate(rows),
        key=lambda ir: (float(ir[1]["weighted_score"]), float(ir[1]["max_p_virus"]), -ir[0]),
        reverse=True,
    )
    expected = [r["id"] for _, r in ranked[:TOP]]
    assert [row[1] for row in page.table("#")] == expected


@pytest.mark.parametrize("format", ["parquet", "jsonl"])
def test_report_from_any_table_format_draws_the_same(server, fasta, run, tmp_path, format):
    other = run_and_report(server, fasta, tmp_path, format)
    assert not (other / PREDICTIONS).exists()
    pictures = Page((other / REPORT).read_text()).urls
    assert pictures == Page((run / REPORT).read_text()).urls


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CLI, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "NO_COLOR": "1"},
        timeout=300,
    )


def test_predict_report_flag_and_thresholds(server, fasta, tmp_path):
    out = tmp_path / "out"
    result = cli(
        "predict", str(fasta), "--chunk-size", "300", "-o", str(out), "--url", server.grpc_url,
        "--format", "jsonl", "--viral-above", "0.1", "--nonviral-below", "-0.2",
        "--min-chunks", "2", "--report", "--no-progress",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"report: {out / REPORT}" in result.stdout
    assert re.search(
        r"sequences: \d+ viral, \d+ nonviral, \d+ uncertain, 2 no_frames", result.stdout
    )
    settings = json.loads((out / "run.json").read_text())["settings"]
    assert (settings["viral_above"], settings["nonviral_below"], settings["min_chunks"]) == (
        0.1,
        -0.2,
        2,
    )
    assert (out / frame_table.FILES["jsonl"]).exists() and (out / REPORT).exists()
    for row in summary_rows(out):
        if row["weighted_score"] != "NA":
            score = float(row["weighted_score"])
            assert row["verdict"] == (
                "viral" if score > 0.1 else "nonviral" if score < -0.2 else "uncertain"
            )
        scored = int(row["chunks"]) - int(row["chunks_without_frame"])
        assert row["low_confidence"] == str(scored < min(2, max(int(row["chunks"]), 1)))


def test_predict_refuses_crossed_thresholds(fasta, tmp_path):
    result = cli(
        "predict", str(fasta), "--chunk-size", "300", "-o", str(tmp_path / "out"),
        "--url", "127.0.0.1:1", "--viral-above", "-0.5", "--nonviral-below", "0.5",
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "virnucpro-triton: error: the viral threshold (-0.5) must be above the non-viral one (0.5)"
    ]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        ("run.json", "run.json: no such file"),
        (SUMMARY, f"{SUMMARY}: no such file"),
        (PREDICTIONS, f"{PREDICTIONS}: no such file"),
        ("broken run.json", "run.json: not JSON"),
        ("broken summary", f"{SUMMARY}:3: not a summary row"),
    ],
)
def test_report_on_incomplete_output_is_a_one_line_error(run, tmp_path, missing, message):
    out = tmp_path / "out"
    shutil.copytree(run, out)
    (out / REPORT).unlink()
    if missing == "broken run.json":
        (out / "run.json").write_text("{")
    elif missing == "broken summary":
        lines = (out / SUMMARY).read_text().splitlines(keepends=True)
        (out / SUMMARY).write_text(lines[0] + lines[1] + "cut\t12\n")
    else:
        (out / missing).unlink()
    result = cli("report", str(out))
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert f"virnucpro-triton: error: {out}/{message}" in result.stderr
    assert not (out / REPORT).exists()


def _set(info: dict, key: str, value) -> None:
    *parts, last = key.split(".")
    for part in parts:
        info = info[part]
    info[last] = value


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "settings.chunk_size",
            "300",
            'settings.chunk_size must be a whole number >= 1, not "300"',
        ),
        ("settings.chunk_size", 0, "settings.chunk_size must be a whole number >= 1, not 0"),
        ("settings.viral_above", "0.5", 'settings.viral_above must be a number, not "0.5"'),
        ("settings.format", ["tsv"], 'settings.format must be a string, not ["tsv"]'),
        ("counts.records", True, "counts.records must be a whole number >= 0, not true"),
        ("counts.frames", None, "counts.frames must be a whole number >= 0, not null"),
        ("counts.verdicts", [], "counts.verdicts must be an object, not []"),
        (
            "counts.verdicts.viral",
            "3",
            'counts.verdicts.viral must be a whole number >= 0, not "3"',
        ),
        ("wall_seconds", "fast", 'wall_seconds must be a number or null, not "fast"'),
        ("models", ["esm2"], 'models must be an object, not ["esm2"]'),
        ("models.esm2", "tiny", 'models.esm2 must be an object, not "tiny"'),
        (
            "models.esm2.random_weights",
            "true",
            'models.esm2.random_weights must be true or false, not "true"',
        ),
        ("models.esm2.source_sha256", 12, "models.esm2.source_sha256 must be a string, not 12"),
        ("settings", [], "not a run.json of this version of `predict`"),
    ],
)
def test_report_on_run_json_values_of_the_wrong_type_is_a_one_line_error(
    run, tmp_path, key, value, message
):
    out = tmp_path / "out"
    shutil.copytree(run, out)
    (out / REPORT).unlink()
    info = json.loads((out / "run.json").read_text())
    _set(info, key, value)
    (out / "run.json").write_text(json.dumps(info))
    result = cli("report", str(out))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr == f"virnucpro-triton: error: {out}/run.json: {message}\n"
    assert not (out / REPORT).exists()


def test_report_command_with_top(run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(run, out)
    result = cli("report", str(out), "--top", "1")
    assert result.returncode == 0, result.stderr
    assert len(Page((out / REPORT).read_text()).urls) == 4 + 1


def ranked_ids(rows: list[dict[str, str]]) -> list[str]:
    """Ids by weighted score, then max P(virus), then input order; no score last."""

    def key(item):
        index, row = item
        score, max_p = (
            float(row[c].replace("NA", "nan")) for c in ("weighted_score", "max_p_virus")
        )
        return (-2 if math.isnan(score) else score, -1 if math.isnan(max_p) else max_p, -index)

    return [row["id"] for _, row in sorted(enumerate(rows), key=key, reverse=True)]


def test_sequence_table_lists_every_sequence_ranked(run):
    page = Page((run / REPORT).read_text())
    rows = page.table("rank")
    assert [r[1] for r in rows] == ranked_ids(summary_rows(run))
    assert [r[0] for r in rows] == [str(i) for i in range(1, len(rows) + 1)]
    assert "best ranked of" not in (run / REPORT).read_text()


def test_sequence_table_past_its_cap_lists_the_top_rows_and_says_so(run, tmp_path, monkeypatch):
    out = tmp_path / "out"
    shutil.copytree(run, out)
    monkeypatch.setattr(report, "TABLE_ROWS", 5)
    write_report(out, top=TOP)
    text = (out / REPORT).read_text()
    assert [r[1] for r in Page(text).table("rank")] == ranked_ids(summary_rows(out))[:5]
    assert "The 5 best ranked of 18 sequences (the table holds 5 at most" in text


def test_total_time_counts_the_server_start(run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(run, out)
    info = json.loads((out / "run.json").read_text())
    info["start_seconds"] = 41.5
    (out / "run.json").write_text(json.dumps(info))
    write_report(out, top=TOP)
    cells = Page((out / REPORT).read_text()).cells()
    total = cells[cells.index("total time incl. server start (s)") + 1]
    assert total == f"{41.5 + info['wall_seconds']:,.2f}"
