"""`virnucpro-triton report OUT_DIR`: one self-contained HTML page about a `predict` run.

It reads run.json, sequence_summary.tsv and the per-frame table (any of its formats), each in
one streaming pass: memory holds histograms, the rows of the per-sequence table (at most
TABLE_ROWS), the top sequences and their chunk tracks, never a whole table, so a report of a
huge run fits where the run did. Sequences are ranked by weighted score (ties: higher max
P(virus), then input order; no score last). The top sequences drawn chunk by chunk are the best
ranked of those with enough evidence (not low_confidence). Plots are PNG from matplotlib's Agg
backend, embedded as base64 data: URIs, and the table's search, filter and sort are an inline
script, so the page loads nothing from anywhere; it links to the run's files beside it.
"""

from __future__ import annotations

import base64
import heapq
import html
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from virnucpro_triton.errors import VirnucproError
from virnucpro_triton.results import frame_table, run_info
from virnucpro_triton.results.evidence import VERDICT_NAMES
from virnucpro_triton.results.outputs import (
    REPORT,
    SUMMARY,
    SUMMARY_COLUMNS,
    VERDICTS,
    VIRUSES,
    atomic_files,
)
from virnucpro_triton.sequence import chunk_starts, split_chunk_id

TOP = 20
TABLE_ROWS = 5_000  # rows of the per-sequence table at most: the best ranked past that
LENGTH_BINS = 30  # log10(length) bins of the score-against-length plot
P_BINS = 50  # histogram bins of P(virus) over [0, 1]
SCORE_BINS = 40  # histogram bins of the weighted score over [-1, 1]
COLORS = {
    "viral": "#c0392b",
    "nonviral": "#2471a3",
    "uncertain": "#b7950b",
    "no_frames": "#7f8c8d",
    "too_short": "#bdc3c7",
}


_NUMBERS = ("weighted_score", "max_p_virus")  # summary columns read as numbers ("NA": NaN)
# The JSON types of what the report reads from run.json: a check and how a refusal says it.
_COUNT = (lambda v: type(v) is int and v >= 0, "a whole number >= 0")
_SIZE = (lambda v: type(v) is int and v >= 1, "a whole number >= 1")
_NUMBER = (lambda v: type(v) in (int, float), "a number")
_NUMBER_OR_NULL = (lambda v: v is None or type(v) in (int, float), "a number or null")
_TEXT = (lambda v: isinstance(v, str), "a string")
_OBJECT = (lambda v: isinstance(v, dict), "an object")
_RUN_INFO_KEYS = {  # those every run.json of this version holds
    "settings.format": _TEXT,
    "settings.chunk_size": _SIZE,
    "settings.viral_above": _NUMBER,
    "settings.nonviral_below": _NUMBER,
    "settings.min_chunks": _COUNT,
    "counts.records": _COUNT,
    "counts.verdicts": _OBJECT,
}
_RUN_INFO_OPTIONAL = {
    "models": _OBJECT,
    "versions": _OBJECT,
    **dict.fromkeys(
        ("start_seconds", "wall_seconds", "chunks_per_second", "frames_per_second"),
        _NUMBER_OR_NULL,
    ),
}
# An entry's provenance in `models` (client/provenance.py): what describe() reads.
_PROVENANCE_KINDS = {
    **dict.fromkeys(("source", "source_sha256", "dtype", "fp8", "virnucpro_triton_version"), _TEXT),
    "random_weights": (lambda v: type(v) is bool, "true or false"),
}


class ReportError(VirnucproError, RuntimeError):
    """An output directory the report cannot be made from; the message is for the user."""


@dataclass
class _Sequence:
    """One row of sequence_summary.tsv and, for the top ones, its chunks' P(virus)."""

    index: int  # row in the summary, i.e. input order
    cells: dict[str, str]
    score: float  # NaN for NA
    max_p_virus: float
    chunk_max: dict[int, float] = field(default_factory=dict)  # chunk number -> max P(virus)
    frames: list[tuple[int, float]] = field(default_factory=list)  # (chunk number, P(virus))

    @property
    def rank_key(self) -> tuple[float, float, int]:
        # -2: below every score (they lie in [-1, 1]); NaN would not compare
        score = -2.0 if np.isnan(self.score) else self.score
        max_p = -1.0 if np.isnan(self.max_p_virus) else self.max_p_virus
        return (score, max_p, -self.index)


@dataclass
class _Summary:
    """What the report keeps of sequence_summary.tsv."""

    best: list[_Sequence]  # the top ones with enough evidence, best first
    rows: list[_Sequence]  # the per-sequence table, best first
    records: int
    low_confidence: int
    scores: dict[str, np.ndarray]  # verdict -> histogram of its scores
    by_length: np.ndarray  # [LENGTH_BINS, SCORE_BINS] sequences by log10(length) and score
    max_length: int


def write_report(out_dir: Path, top: int = TOP) -> Path:
    """Write OUT_DIR/report.html (atomically) and return its path."""
    info = _run_info(out_dir)
    summary, frames = out_dir / SUMMARY, out_dir / frame_table.FILES[info["settings"]["format"]]
    for path in (summary, frames):
        _require(path)
    read = _read_summary(summary, top)
    p_virus = _read_frames(frames, {s.cells["id"]: s for s in read.best})
    files = [
        name
        for name in (frame_table.FILES[info["settings"]["format"]], VERDICTS, SUMMARY, VIRUSES)
        if (out_dir / name).is_file()
    ]
    page = _page(info, read, p_virus, [*files, run_info.RUN_INFO])
    with atomic_files(out_dir, [REPORT]) as out:
        out[REPORT].write(page)
    return out_dir / REPORT


def _check_value(path: Path, key: str, value: object, kind: tuple) -> None:
    valid, words = kind
    if not valid(value):
        shown = json.dumps(value)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        raise ReportError(f"{path}: {key} must be {words}, not {shown}")


def _require(path: Path) -> None:
    if not path.is_file():
        raise ReportError(f"{path}: no such file (not the output of a finished `predict` run?)")


def _run_info(out_dir: Path) -> dict:
    path = out_dir / run_info.RUN_INFO
    _require(path)
    try:
        info = run_info.read(out_dir)
    except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError is a ValueError
        raise ReportError(f"{path}: not JSON ({error})") from None
    if not isinstance(info, dict) or not all(
        isinstance(info.get(part), dict) for part in ("settings", "counts")
    ):
        raise ReportError(f"{path}: not a run.json of this version of `predict`")
    for key, kind in _RUN_INFO_KEYS.items():
        part, name = key.split(".")
        if name not in info[part]:
            raise ReportError(f"{path}: not a run.json of this version of `predict`: no {key}")
        _check_value(path, key, info[part][name], kind)
    for key, kind in _RUN_INFO_OPTIONAL.items():
        if key in info:
            _check_value(path, key, info[key], kind)
    counts = {f"counts.{k}": v for k, v in info["counts"].items() if k != "verdicts"}
    counts |= {f"counts.verdicts.{k}": v for k, v in info["counts"]["verdicts"].items()}
    for key, value in counts.items():  # all printed as counts
        _check_value(path, key, value, _COUNT)
    for model, about in info.get("models", {}).items():
        _check_value(path, f"models.{model}", about, _OBJECT)
        for name, kind in _PROVENANCE_KINDS.items():
            if name in about:
                _check_value(path, f"models.{model}.{name}", about[name], kind)
    if info["settings"]["format"] not in frame_table.FORMATS:
        raise ReportError(f"{path}: unknown per-frame table format {info['settings']['format']!r}")
    return info


def _read_summary(path: Path, top: int) -> _Summary:
    """The `top` best-ranked sequences with enough evidence, the table's rows, histograms."""
    scores = {verdict: np.zeros(SCORE_BINS, np.int64) for verdict in VERDICT_NAMES}
    by_length = np.zeros((LENGTH_BINS, SCORE_BINS), np.int64)
    counted = dict(records=0, low_confidence=0, max_length=0)
    best: list[tuple] = []  # heaps of (rank key, sequence)
    rows: list[tuple] = []

    def keep(heap: list[tuple], size: int, sequence: _Sequence) -> None:
        item = (sequence.rank_key, sequence)
        if len(heap) < size:
            heapq.heappush(heap, item)
        elif size and item[0] > heap[0][0]:
            heapq.heapreplace(heap, item)

    def read() -> Iterator[_Sequence]:
        with open(path) as handle:
            header = next(handle, "").rstrip("\n").split("\t")
            if "weighted_score" not in header:
                raise ReportError(f"{path}: no weighted_score column (from an older `predict`?)")
            for index, line in enumerate(handle):
                cells = dict(zip(header, line.rstrip("\n").split("\t")))
                try:
                    score, max_p = (float(cells[c].replace("NA", "nan")) for c in _NUMBERS)
                    length = int(cells["length"])
                    histogram = scores[cells["verdict"]]
                except (KeyError, ValueError):
                    raise ReportError(f"{path}:{index + 2}: not a summary row") from None
                yield _Sequence(index, cells, score, max_p)
                counted["records"] += 1
                counted["max_length"] = max(counted["max_length"], length)
                if not np.isnan(score):
                    column = min(int((score + 1) / 2 * SCORE_BINS), SCORE_BINS - 1)
                    histogram[column] += 1
                    by_length[_length_bin(length), column] += 1

    for sequence in read():
        keep(rows, TABLE_ROWS, sequence)
        if sequence.cells["low_confidence"] == "True":
            counted["low_confidence"] += 1
        elif not np.isnan(sequence.score):
            keep(best, top, sequence)
    ranked = [
        [s for _, s in sorted(heap, key=lambda item: item[0], reverse=True)]
        for heap in (best, rows)
    ]
    return _Summary(*ranked, scores=scores, by_length=by_length, **counted)


def _length_bin(length: int) -> int:
    """Bins of log10(length) over 1 bp .. 10 Mbp (longer: the last bin)."""
    return min(int(np.log10(max(length, 1)) / 7 * LENGTH_BINS), LENGTH_BINS - 1)


def _read_frames(path: Path, tracked: dict[str, _Sequence]) -> np.ndarray:
    """The histogram of P(virus) over all frames; fills in the tracks of `tracked` sequences."""
    counts = np.zeros(P_BINS, np.int64)
    try:
        for row in frame_table.read_frames(path):
            counts[min(int(row.p_virus * P_BINS), P_BINS - 1)] += 1
            sequence = tracked.get(row.id)
            if sequence is not None:
                chunk = split_chunk_id(row.chunk_id)[1]
                sequence.frames.append((chunk, row.p_virus))
                sequence.chunk_max[chunk] = max(sequence.chunk_max.get(chunk, 0.0), row.p_virus)
    except (KeyError, ValueError, TypeError) as error:  # pyarrow's ArrowInvalid is a ValueError
        raise ReportError(f"{path}: not a per-frame table written by `predict` ({error})") from None
    return counts


def _png(figure: Figure) -> str:
    """An <img> holding the figure as an embedded PNG."""
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="" src="data:image/png;base64,{data}">'


def _verdict_plot(verdicts: dict[str, int]) -> str:
    figure = Figure(figsize=(5.5, 2.8), dpi=100, layout="constrained")
    ax = figure.add_subplot()
    bars = ax.bar(VERDICT_NAMES, [verdicts.get(v, 0) for v in VERDICT_NAMES])
    for bar, name in zip(bars, VERDICT_NAMES):
        bar.set_color(COLORS[name])
    ax.bar_label(bars)
    ax.set_ylabel("sequences")
    ax.set_title("Weighted-evidence verdicts")
    ax.margins(y=0.15)
    return _png(figure)


def _histogram(series: dict[str, np.ndarray], low: float, xlabel: str, title: str, lines=()) -> str:
    """Histograms over [low, 1], stacked in the order given, coloured by verdict."""
    figure = Figure(figsize=(5.5, 2.8), dpi=100, layout="constrained")
    ax = figure.add_subplot()
    bottom = np.zeros(len(next(iter(series.values()))), np.int64)
    edges = np.linspace(low, 1.0, len(bottom) + 1)
    for name, counts in series.items():
        color = COLORS.get(name, "#5d6d7e")
        ax.stairs(bottom + counts, edges, baseline=bottom, fill=True, color=color, label=name)
        bottom = bottom + counts
    if len(series) > 1:
        ax.legend(fontsize=8)
    for x in lines:
        ax.axvline(x, color="#c0392b", linestyle="--", linewidth=1)
    ax.set_xlim(low, 1.0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.set_title(title)
    return _png(figure)


def _by_length(summary: _Summary, lines=()) -> str:
    """Sequences by weighted score and length (log scale), as a 2-D histogram."""
    figure = Figure(figsize=(5.5, 3.2), dpi=100, layout="constrained")
    ax = figure.add_subplot()
    lengths = 10 ** np.linspace(0, 7, LENGTH_BINS + 1)
    scores = np.linspace(-1.0, 1.0, SCORE_BINS + 1)
    mesh = ax.pcolormesh(scores, lengths, np.ma.masked_equal(summary.by_length, 0), cmap="viridis")
    figure.colorbar(mesh, ax=ax, label="sequences")
    for x in lines:
        ax.axvline(x, color="#c0392b", linestyle="--", linewidth=1)
    ax.set_yscale("log")
    ax.set_ylim(1, max(summary.max_length, 10) * 1.5)
    ax.set_xlabel("weighted score")
    ax.set_ylabel("length (bp)")
    ax.set_title("Weighted score against length")
    return _png(figure)


def _track(sequence: _Sequence, chunk_size: int) -> str:
    """max P(virus) of each chunk over its span of the sequence; frames as dots; grey: no frame."""
    length = int(sequence.cells["length"])
    starts = chunk_starts(length, chunk_size)
    figure = Figure(figsize=(9, 1.9), dpi=100, layout="constrained")
    ax = figure.add_subplot()
    for number, start in enumerate(starts, start=1):
        end = min(start + chunk_size, length)
        if number in sequence.chunk_max:
            p = sequence.chunk_max[number]
            color = COLORS["viral"] if p >= 0.5 else COLORS["nonviral"]
            ax.hlines(p, start, end, colors=color, linewidth=2.5)
        else:
            ax.axvspan(start, end, color="#d5d8dc", linewidth=0)
    if sequence.frames:
        chunks, values = zip(*sequence.frames)
        middles = [starts[c - 1] + min(chunk_size, length - starts[c - 1]) / 2 for c in chunks]
        ax.scatter(middles, values, s=9, color="#1c2833", alpha=0.6, linewidths=0, zorder=3)
    ax.axhline(0.5, color="#7f8c8d", linestyle=":", linewidth=1)
    ax.set_xlim(0, length)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("P(virus)")
    ax.set_xlabel("position (bp)")
    ax.set_title(
        f"{sequence.cells['id'][:90]}: score {sequence.cells['weighted_score']} "
        f"({sequence.cells['verdict']})",
        loc="left",
        fontsize=10,
        parse_math=False,  # ids may hold '$'
    )
    return _png(figure)


def _table(rows: list[tuple], header: tuple[str, ...] | None = None) -> str:
    cells = "".join(f"<th>{html.escape(str(h))}</th>" for h in header) if header else ""
    head = f"<tr>{cells}</tr>" if header else ""
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table>{head}{body}</table>"


_STYLE = """
body { font-family: sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem;
       color: #1c2833; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: 0.5rem 0; font-size: 0.9rem; }
td, th { border: 1px solid #d5d8dc; padding: 0.2rem 0.5rem; text-align: left; }
td:not(:first-child) { font-variant-numeric: tabular-nums; }
img { max-width: 100%; display: block; margin: 0.5rem 0; }
.note { color: #566573; font-size: 0.9rem; }
.random { background: #c0392b; color: #fff; padding: 0.6rem 1rem; font-weight: bold; }
#sequences th { cursor: pointer; user-select: none; }
#sequences th[data-order="ascending"]::after { content: " ▲"; }
#sequences th[data-order="descending"]::after { content: " ▼"; }
.scroll { max-height: 32rem; overflow: auto; }
"""

# The per-sequence table's search, verdict filter and sort on a header click; inline, no library.
_SCRIPT = """
(function () {
  var table = document.getElementById("sequences");
  var body = table.tBodies[0];
  var search = document.getElementById("search");
  var verdict = document.getElementById("verdict");
  function filter() {
    var text = search.value.toLowerCase(), wanted = verdict.value, shown = 0;
    Array.prototype.forEach.call(body.rows, function (row) {
      var show = row.cells[1].textContent.toLowerCase().indexOf(text) >= 0 &&
        (wanted === "" || row.cells[7].textContent === wanted);
      row.hidden = !show;
      shown += show ? 1 : 0;
    });
    document.getElementById("shown").textContent = shown.toLocaleString("en");
  }
  function key(row, column) {
    var text = row.cells[column].textContent;
    if (text === "NA") return -Infinity;
    var number = Number(text);
    return text !== "" && !isNaN(number) ? number : text;
  }
  table.tHead.addEventListener("click", function (event) {
    var th = event.target.closest("th");
    if (!th) return;
    var column = th.cellIndex, descending = th.dataset.order !== "descending";
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (cell) {
      cell.removeAttribute("data-order");
    });
    th.dataset.order = descending ? "descending" : "ascending";
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a, column), y = key(b, column), order;
      if (typeof x === typeof y) order = x < y ? -1 : x > y ? 1 : 0;
      else order = typeof x === "number" ? -1 : 1;
      return descending ? -order : order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  });
  search.addEventListener("input", filter);
  verdict.addEventListener("change", filter);
})();
"""


# Columns of sequence_summary.tsv shown for the top sequences.
_TOP_COLUMNS = tuple(c for c in SUMMARY_COLUMNS if c != "chunks_virus")


def _sequence_table(summary: _Summary) -> str:
    """Every sequence, or the TABLE_ROWS best ranked, with a search box and a verdict filter."""
    header = "".join(f"<th>{html.escape(h)}</th>" for h in ("rank", *_TOP_COLUMNS))
    body = "".join(
        f"<tr><td>{rank}</td>"
        + "".join(f"<td>{html.escape(s.cells[c])}</td>" for c in _TOP_COLUMNS)
        + "</tr>"
        for rank, s in enumerate(summary.rows, start=1)
    )
    options = "".join(f'<option value="{v}">{v}</option>' for v in VERDICT_NAMES)
    capped = (
        f"The {len(summary.rows):,} best ranked of {summary.records:,} sequences (the table "
        f"holds {TABLE_ROWS:,} at most; sequence_summary.tsv has them all). "
        if summary.records > len(summary.rows)
        else ""
    )
    return f"""<p class="note">{capped}Ranked by weighted score; click a column to sort by it.</p>
<p><label>id contains <input id="search" type="search"></label>
<label>verdict <select id="verdict"><option value="">any</option>{options}</select></label>
<span class="note"><span id="shown">{len(summary.rows):,}</span> shown</span></p>
<div class="scroll"><table id="sequences"><thead><tr>{header}</tr></thead>
<tbody>{body}</tbody></table></div>
<script>{_SCRIPT}</script>"""


def _number(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _page(info: dict, summary: _Summary, p_virus: np.ndarray, files: list[str]) -> str:
    settings, counts = info["settings"], info["counts"]
    best = summary.best
    verdicts = counts["verdicts"]
    above, below = settings["viral_above"], settings["nonviral_below"]
    rule = (
        "Per chunk δ = max P(virus) − max P(others) over its stop-free frames; sequence score "
        f"Σ δ·√|δ| / Σ √|δ|: <b>viral</b> above {above:g}, <b>nonviral</b> below {below:g}, "
        "<b>uncertain</b> in between; <b>no_frames</b>: no chunk with a stop-free frame; "
        "<b>too_short</b>: shorter than --min-length, not classified. "
        "Low confidence: fewer chunks with a stop-free frame than "
        f"min({settings['min_chunks']}, the chunks the sequence has)."
    )
    models = info.get("models", {})
    random = run_info.random_weights(models)
    banner = (
        f'<p class="random">RANDOM WEIGHTS: {html.escape(", ".join(random))} hold random weights '
        "(demo or benchmark models), so these verdicts are meaningless.</p>"
        if random
        else ""
    )
    model_rows = [(name, run_info.describe(about)) for name, about in models.items()]
    start, wall = info.get("start_seconds"), info.get("wall_seconds")
    total = None if wall is None else wall + (start or 0.0)
    throughput = [
        ("total time incl. server start (s)", _number(total, 2)),
        ("server start (s)", _number(start, 2)),
        ("wall time (s)", _number(info.get("wall_seconds"), 2)),
        ("chunks per second", _number(info.get("chunks_per_second"))),
        ("frames per second", _number(info.get("frames_per_second"))),
    ]
    count_rows = [
        (name.replace("_", " "), f"{n:,}") for name, n in counts.items() if name != "verdicts"
    ]
    verdict_rows = [(v, f"{verdicts.get(v, 0):,}") for v in VERDICT_NAMES]
    verdict_rows.append(("low confidence", f"{summary.low_confidence:,}"))
    top_rows = [(rank, *(s.cells[c] for c in _TOP_COLUMNS)) for rank, s in enumerate(best, start=1)]
    top_table = _table(top_rows, ("#", *_TOP_COLUMNS))
    tracks = "".join(_track(s, settings["chunk_size"]) for s in best)
    links = "".join(
        f'<li><a href="{html.escape(name)}">{html.escape(name)}</a></li>' for name in files
    )
    title = f"VirNucPro report: {settings.get('input', '')}"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>{_STYLE}</style>
</head>
<body>
{banner}
<h1>{html.escape(title)}</h1>
<p class="note">Started {html.escape(str(info.get("started", "?")))}, chunk size
{html.escape(str(settings["chunk_size"]))} bp, {counts["records"]:,} sequences.</p>
<p class="note">Files of this run, beside this page:</p>
<ul>{links}</ul>

<h2>Verdicts</h2>
<p class="note">{rule}</p>
{_table(verdict_rows, ("verdict", "sequences"))}
{_verdict_plot(verdicts)}

<h2>Distributions</h2>
{_histogram({"frames": p_virus}, 0.0, "P(virus)", "P(virus) of every stop-free frame")}
{_histogram(summary.scores, -1.0, "weighted score", "Weighted score by verdict", (below, above))}
{_by_length(summary, (below, above))}

<h2>Sequences</h2>
{_sequence_table(summary)}

<h2>Top {len(best)} sequences by weighted score</h2>
<p class="note">Of the sequences with enough evidence (not low confidence).
Bars: max P(virus) of each chunk over the bases it covers (red ≥ 0.5);
dots: single frames; grey: chunk without a stop-free frame.</p>
{top_table if best else "<p>None: no sequence has enough evidence, or --top is 0.</p>"}
{tracks}

<h2>Run</h2>
{_table(model_rows, ("model", "weights")) if model_rows else "<p>Models not recorded.</p>"}
{_table(throughput)}
{_table(count_rows)}
{_table([(k, v) for k, v in settings.items()], ("setting", "value"))}
{_table([(k, v) for k, v in info.get("versions", {}).items()], ("software", "version"))}
</body>
</html>
"""
