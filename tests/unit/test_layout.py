"""Modules by job (no server): the package's parts import only the layers below them, results/
works without a server client, every user-facing error shares one base that the CLI prints as
one line, and the CLI's defaults are their owners'."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from virnucpro_triton import errors
from virnucpro_triton.cli import main
from virnucpro_triton.client import connection
from virnucpro_triton.client.addresses import AddressError
from virnucpro_triton.client.classify import BATCH_CHUNKS
from virnucpro_triton.door.app import DoorError
from virnucpro_triton.export import VerificationError
from virnucpro_triton.export.checkpoints import CheckpointError
from virnucpro_triton.export.fp8_choice import Fp8Refused
from virnucpro_triton.fasta import FastaError
from virnucpro_triton.repository import CHUNK_SIZES, MAX_BATCH_CHUNKS, RepositoryError
from virnucpro_triton.results import report
from virnucpro_triton.results.evidence import DEFAULT_THRESHOLDS, ThresholdError
from virnucpro_triton.results.journal import ResumeRefused
from virnucpro_triton.results.report import ReportError
from virnucpro_triton.sequence import chunk_id, chunks, split_chunk_id
from virnucpro_triton.server import ServerError

PACKAGE = Path(__file__).parents[2] / "virnucpro_triton"
# The layers of the package, top first: a part (a top-level module or subpackage) imports only
# parts of the layers below its own, so data flows one way, down. Parts of one layer do their
# own jobs and never import each other: client/ talks to servers and results/ writes files,
# and only a command (commands/) joins the two.
LAYERS = (
    ("cli",),  # the command line: options only
    ("commands",),  # what a command does, joining servers and result files
    ("client", "results", "server", "serving", "export"),
    ("door", "records", "sequence_embedders", "health"),
    ("backends", "sequence", "fasta", "interrupt", "processes"),
    ("repository",),
    ("alphabet", "credentials", "models"),
    ("errors",),
)


def _part(module: str) -> str:
    """The part of the package `module` (virnucpro_triton.x.y) belongs to: x."""
    return module.split(".")[1]


def _package_imports() -> list[tuple[str, str]]:
    """(importing module, imported module) of every import of the package's own modules, at
    the top or inside a function, relative ones resolved."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = name.split(".")[: -node.level] if node.level else []
                module = ".".join([*base, *([node.module] if node.module else [])])
                # `from virnucpro_triton import x` names the part x
                targets = [f"{module}.{alias.name}" for alias in node.names]
            else:
                continue
            found += [(name, t) for t in targets if t.startswith("virnucpro_triton.")]
    return found


def test_every_part_imports_only_the_layers_below_it():
    layer = {part: depth for depth, parts in enumerate(reversed(LAYERS)) for part in parts}
    parts = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    parts |= {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert parts == set(layer), "every part of the package has its layer in LAYERS"
    upward = [
        (module, imported)
        for module, imported in _package_imports()
        if _part(module) != _part(imported) and layer[_part(imported)] >= layer[_part(module)]
    ]
    assert upward == []


def _imported(code: str) -> list[str]:
    """Which of the heavy packages a fresh interpreter has imported after `code`."""
    heavy = ("tritonclient", "grpc", "numpy", "matplotlib", "torch")
    script = f"import sys; {code}; print(' '.join(m for m in {heavy!r} if m in sys.modules))"
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return run.stdout.split()


def test_local_file_work_needs_no_server_client():
    modules = "outputs, evidence, frame_table, writer, journal, run_info, report, preprocess"
    found = _imported(f"from virnucpro_triton.results import {modules}")
    assert "tritonclient" not in found and "grpc" not in found and "torch" not in found


def test_the_cli_starts_without_its_commands_heavy_imports():
    assert _imported("import virnucpro_triton.cli") == []


@pytest.mark.parametrize(
    "error",
    [
        FastaError,
        connection.ClientError,
        ServerError,
        RepositoryError,
        AddressError,
        CheckpointError,
        VerificationError,
        Fp8Refused,
        ReportError,
        ThresholdError,
        DoorError,
        ResumeRefused,
    ],
)
def test_every_user_facing_error_has_the_one_base(error):
    assert issubclass(error, errors.VirnucproError)


def test_the_cli_defaults_are_their_owners_values():
    defaults = {}
    for command in ("predict", "report"):
        ctx = main.commands[command].make_context(
            command, ["x"] * (command == "report"), resilient_parsing=True
        )
        defaults.update({p.name: p.get_default(ctx) for p in main.commands[command].params})
    assert defaults["viral_above"] == DEFAULT_THRESHOLDS.viral_above
    assert defaults["nonviral_below"] == DEFAULT_THRESHOLDS.nonviral_below
    assert defaults["min_chunks"] == DEFAULT_THRESHOLDS.min_chunks
    assert defaults["retry_seconds"] == connection.RETRY_SECONDS
    assert defaults["resolve_seconds"] == connection.RESOLVE_SECONDS
    assert defaults["max_message_mb"] == connection.MAX_MESSAGE_MB
    assert defaults["batch_chunks"] == BATCH_CHUNKS
    assert defaults["top"] == report.TOP
    export = {p.name for p in main.commands["export"].params}
    assert {f"classifier_{size}" for size in CHUNK_SIZES} <= export


def test_the_request_size_limit_has_one_home():
    """`predict --batch-chunks` and the workflow's config take repository.MAX_BATCH_CHUNKS."""
    option = next(p for p in main.commands["predict"].params if p.name == "batch_chunks")
    assert (option.type.min, option.type.max) == (1, MAX_BATCH_CHUNKS)
    schema = Path(__file__).parents[2] / "workflow" / "schemas" / "config.schema.yaml"
    found = yaml.safe_load(schema.read_text())
    batch_chunks = found["properties"]["predict"]["properties"]["batch_chunks"]
    assert (batch_chunks["maximum"], batch_chunks["default"]) == (MAX_BATCH_CHUNKS, BATCH_CHUNKS)
    refused = CliRunner().invoke(
        main,
        [
            "predict",
            "x.fa",
            "--chunk-size",
            "300",
            "-o",
            "o",
            "--batch-chunks",
            str(MAX_BATCH_CHUNKS + 1),
        ],
    )
    assert refused.exit_code == 2 and f"1<=x<={MAX_BATCH_CHUNKS}" in refused.output


def test_the_one_handler_prints_a_user_error_as_one_line(tmp_path):
    """Contradicting thresholds (a ThresholdError) and a missing report input (ReportError)
    go through the group's handler: one line, exit 1, no traceback."""
    runner = CliRunner()
    fasta = tmp_path / "in.fa"
    fasta.write_text(">a\nACGT\n")
    args = [
        "predict",
        str(fasta),
        "--chunk-size",
        "300",
        "-o",
        str(tmp_path / "o"),
        "--url",
        "127.0.0.1:1",
        "--viral-above",
        "-0.5",
        "--nonviral-below",
        "0.5",
    ]
    for result in (runner.invoke(main, args), runner.invoke(main, ["report", str(tmp_path)])):
        assert result.exit_code == 1, result.output
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("virnucpro-triton: error: "), lines
    assert "must be above the non-viral one" in runner.invoke(main, args).stderr


def test_chunk_ids_read_back_as_built():
    assert [i for i, _ in chunks("a_chunk_3", "A" * 700, 300)] == [
        "a_chunk_3_chunk_1",
        "a_chunk_3_chunk_2",
        "a_chunk_3_chunk_3",
    ]
    assert split_chunk_id(chunk_id("a_chunk_3", 12)) == ("a_chunk_3", 12)
