"""The workflow run by snakemake (.venv-workflow), for the workflow and cluster tiers: a project
folder, the direct `predict` a run must match, and what a run's output says."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


SNAKEMAKE = ROOT / ".venv-workflow" / "bin" / "snakemake"


SNAKEFILE = ROOT / "workflow" / "Snakefile"


CLI = str(Path(sys.executable).parent / "virnucpro-triton")


# The tiny models' random weights score around 0: a cut at 0 calls some records viral.
THRESHOLDS = {"viral_above": 0.0, "nonviral_below": -0.05}


THRESHOLD_OPTIONS = ["--viral-above", "0.0", "--nonviral-below", "-0.05"]


COMPARED = [
    "prediction_results.txt",
    "prediction_results_highestscore.csv",
    "sequence_summary.tsv",
    "virus.fna",
]


OUTPUTS = [*COMPARED, "run.json"]


def write_project(workdir: Path, samples: dict[str, list[Path]], **config) -> None:
    """A sample sheet and a config (JSON is YAML) in `workdir`, where snakemake will run."""
    workdir.mkdir(parents=True, exist_ok=True)
    lines = ["sample\tfasta"] + [
        f"{name}\t{','.join(map(str, paths))}" for name, paths in samples.items()
    ]
    (workdir / "samples.tsv").write_text("\n".join(lines) + "\n")
    settings = {"samples": "samples.tsv", "results": "results", "virnucpro_triton": CLI}
    (workdir / "config.yaml").write_text(json.dumps({**settings, **config}))


def jobs_run(output: str) -> dict[str, int]:
    """The `Job stats` table of a snakemake run: jobs per rule ({} when nothing was to do)."""
    table = re.search(r"Job stats:\njob +count\n[- ]+\n((?:\S+ +\d+\n)+)", output)
    if table is None:
        assert "Nothing to be done" in output, output[-4000:]
        return {}
    counts = dict(line.split() for line in table.group(1).splitlines())
    counts.pop("total")
    return {rule: int(n) for rule, n in counts.items()}


def predict_directly(fasta: Path, out: Path, url: str, *options: str) -> Path:
    result = subprocess.run(
        [CLI, "predict", fasta, "--chunk-size", "300", "-o", out, "--url", url, "--no-progress"]
        + [*THRESHOLD_OPTIONS, *options],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def journaled_chunks(journal: Path) -> int:
    """Chunks answered in a journal so far (header: two lines; blocks of 8 + 54 bytes a chunk)."""
    try:
        data = journal.read_bytes()
    except FileNotFoundError:
        return 0
    lines = data.split(b"\n", 2)
    return len(lines[2]) // (8 + 54) if len(lines) == 3 else 0
