"""A new user's first hour: a repository that cannot serve a run is refused at once, a server
start says what it loads (and loads less), and every output names the models behind it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient

from virnucpro_triton import repository as repo
from virnucpro_triton.cli import main
from virnucpro_triton.results.outputs import PREDICTIONS
from virnucpro_triton.results.report import write_report
from virnucpro_triton.results.run_info import RUN_INFO
from virnucpro_triton.server import EmbeddedServer, backend_directory

CLI = str(Path(sys.executable).parent / "virnucpro-triton")
ROOT = Path(__file__).parents[2]


def cli(*args: str, tmp: Path | None = None) -> subprocess.CompletedProcess:
    """`tmp`: the TMPDIR of the command, where an embedded server would make its log."""
    env = {**os.environ, "NO_COLOR": "1", **({"TMPDIR": str(tmp)} if tmp else {})}
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=300, env=env)


def copy_without(repository: Path, target: Path, *left_out: str) -> Path:
    shutil.copytree(repository, target, ignore=lambda d, names: [n for n in names if n in left_out])
    return target


def only(repository: Path, target: Path, *kept: str) -> Path:
    names = [p.name for p in repository.iterdir() if p.name not in kept]
    return copy_without(repository, target, *names)


def model_py_sources(target: Path) -> Path:
    """What a checkout's model_repository/ used to hold: each Python entry's 1/model.py only."""
    for spec in repo.entry_specs().values():
        if spec.model:
            (target / spec.name / "1").mkdir(parents=True)
            (target / spec.name / "1" / repo.MODEL_PY).write_text(repo.model_py(spec))
    return target


# (command, how the repository is made, words the line holds, words it must not hold)
REFUSED = {
    "predict_without_repository": (
        ["predict", "{fasta}", "--chunk-size", "300", "-o", "{out}"],
        lambda tiny, tmp: tmp / "no_such_repository",
        ["does not exist", "classifier_300", "CLASSIFIER_300=300_model.pth"],
        ["classifier_500"],
    ),
    "predict_300_needs_no_classifier_500": (
        ["predict", "{fasta}", "--chunk-size", "300", "-o", "{out}"],
        lambda tiny, tmp: copy_without(tiny, tmp / "r", repo.ESM2, "classifier_500"),
        ["esm2 missing", "ESM2=esm2_t36_3B_UR50D.pt"],
        ["classifier_500", "dnabert_s", "DNABERT_S="],
    ),
    "predict_on_the_model_py_sources": (  # what a checkout's model_repository/ used to hold
        ["predict", "{fasta}", "--chunk-size", "500", "-o", "{out}"],
        lambda tiny, tmp: model_py_sources(tmp / "r"),
        ["classifier_500 not exported (no config.pbtxt)", "dnabert_s not exported"],
        [],
    ),
    "embed_esm2_needs_only_esm2": (
        ["embed", "{fasta}", "--model", "esm2", "-o", "{out}.npy"],
        lambda tiny, tmp: only(tiny, tmp / "r", repo.DNABERT_S),
        ["esm2 missing", "ESM2="],
        ["dnabert_s", "classifier"],
    ),
    "serve_an_empty_directory": (
        ["serve"],
        lambda tiny, tmp: (tmp / "r").mkdir() or tmp / "r",
        ["virnucpro missing", "esm2 missing", "classifier_500 missing"],
        [],
    ),
}


@pytest.mark.parametrize("case", REFUSED)
def test_a_repository_that_cannot_serve_the_run_is_one_line_before_a_server_start(
    case, tiny_repository, mixed_fasta, tmp_path
):
    command, make, said, unsaid = REFUSED[case]
    repository = make(tiny_repository, tmp_path)
    args = [a.format(fasta=mixed_fasta, out=tmp_path / "out") for a in command]
    (tmp_path / "tmp").mkdir()
    result = cli(*args, "--repository", str(repository), tmp=tmp_path / "tmp")
    assert result.returncode == 1
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"virnucpro-triton: error: model repository {repository} ")
    for words in [*said, "`make export ", "--repository build/demo_repository", "make demo"]:
        assert words in line
    for words in unsaid:
        assert words not in line
    assert not list((tmp_path / "tmp").glob("tritonserver-*.log"))  # no server was made
    assert not (tmp_path / "out").exists()


def test_the_demo_hint_names_where_make_demo_writes():
    (option,) = [p for p in main.commands["demo"].params if p.name == "repository"]
    assert option.default == Path("build/demo_repository")
    recipe = (ROOT / "Makefile").read_text().split("\ndemo:")[1].split("\n\n")[0]
    assert "virnucpro-triton demo\n" in recipe + "\n" and "--repository" not in recipe


def test_a_complete_repository_passes_the_check_with_only_what_the_run_needs(
    tiny_repository, tmp_path
):
    without_500 = copy_without(tiny_repository, tmp_path / "a", "classifier_500")
    repo.check_entries(without_500, repo.pipeline_entries(300))
    with pytest.raises(repo.RepositoryError, match="classifier_500 missing"):
        repo.check_entries(without_500, repo.pipeline_entries(500))
    repo.check_entries(only(tiny_repository, tmp_path / "b", repo.ESM2), [repo.ESM2])


def test_embedded_run_says_what_loads_and_records_the_start(tiny_repository, mixed_fasta, tmp_path):
    """A 300-bp run on a repository without classifier_500, through an embedded server (the
    CLI's run with an embedded server, tested once)."""
    repository = copy_without(tiny_repository, tmp_path / "r", "classifier_500")
    out = tmp_path / "out"
    args = ["predict", str(mixed_fasta), "--chunk-size", "300", "-o", str(out), "--no-progress"]
    result = cli(*args, "--repository", str(repository))
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    loading = [ln for ln in lines if ln.startswith("virnucpro-triton: loading ")]
    assert loading and " s" in loading[0]
    named = {
        name for ln in loading for name in ln.split("loading ")[1].split(" ...")[0].split(", ")
    }
    assert named <= set(repo.pipeline_entries(300)) and repo.ESM2 in named
    (ready,) = [ln for ln in lines if ln.startswith("virnucpro-triton: server ready in ")]
    info = json.loads((out / RUN_INFO).read_text())
    assert info["start_seconds"] > 0 and info["wall_seconds"] > 0
    assert f"{info['start_seconds']:.1f} s" in ready
    assert f"after a {info['start_seconds']:.1f} s start" in result.stdout
    assert list(info["models"]) == list(repo.pipeline_entries(300))
    assert "6 records, " in result.stdout and (out / PREDICTIONS).exists()


def test_a_python_stub_is_started_once_per_instance_only(tiny_repository, tmp_path):
    """Triton's auto-completion of the configs would start one more stub per entry first."""
    repository = only(tiny_repository, tmp_path / "r", repo.ESM2)
    with EmbeddedServer(repository, log_path=tmp_path / "log", log_verbose=1) as server:
        log = server.log_text()
    assert log.count("Starting Python backend stub") == 1


@pytest.mark.parametrize(
    "module, imports_torch",
    [("virnucpro_triton.serving.pipeline", False), ("virnucpro_triton.serving.embedding", True)],
)
def test_stubs_import_only_what_they_use(module, imports_torch):
    """The pipeline computes nothing with torch; its stubs must not pay for its import."""
    script = (
        f"import sys; sys.path.insert(0, {str(backend_directory() / 'python')!r}); "
        f"import {module}; print(sorted(m for m in ('torch', 'google.protobuf') "
        "if m in sys.modules))"
    )
    found = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    assert ("torch" in found) == imports_torch
    if not imports_torch:
        assert "google.protobuf" not in found  # configs are written by export, not read here


def test_every_entry_says_where_its_weights_come_from(server, tiny_repository):
    """Through the model-config API, as any Triton client reads it."""
    version = metadata.version("virnucpro-triton")
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        for entry in sorted(p for p in tiny_repository.iterdir() if p.is_dir()):
            parameters = client.get_model_config(entry.name).config.parameters
            about = {key: value.string_value for key, value in parameters.items()}
            assert about["virnucpro_triton_version"] == version
            if entry.name == repo.PIPELINE:
                assert "random_weights" not in about  # it holds no weights
                continue
            assert about["random_weights"] == "true"
            assert about["source"] == repo.TINY_SOURCE.name
            assert about["dtype"] == repo.read_architecture(entry / "1")["dtype"] == "fp32"
            files = [
                f
                for f in (entry / "1").iterdir()
                if f.is_file() and f.name not in (repo.MODEL_PY, repo.ARCHITECTURE)
            ]
            assert repo.WEIGHTS in {f.name for f in files}
            assert json.loads(about["weights_sha256"]) == {f.name: repo.sha256_of(f) for f in files}
            if entry.name in (repo.DNABERT_S, repo.ESM2):
                assert about["fp8"] == repo.FP8_NONE


def test_random_weights_are_named_in_run_json_summary_and_report(server, mixed_fasta, tmp_path):
    out = tmp_path / "out"
    args = ["predict", str(mixed_fasta), "--chunk-size", "500", "-o", str(out)]
    result = cli(*args, "--url", server.grpc_url, "--report", "--no-progress")
    assert result.returncode == 0, result.stderr
    info = json.loads((out / RUN_INFO).read_text())
    assert list(info["models"]) == list(repo.pipeline_entries(500))
    assert info["start_seconds"] is None  # no server started by this run
    weighted = [n for n in info["models"] if n != repo.PIPELINE]
    # Triton's parameter strings in their JSON types: a boolean, an object of file -> sha256.
    assert all(info["models"][n]["random_weights"] is True for n in weighted)
    for name in weighted:
        files = info["models"][name]["weights_sha256"]
        assert isinstance(files, dict) and repo.WEIGHTS in files, files
        assert all(re.fullmatch("[0-9a-f]{64}", digest) for digest in files.values())
    assert f"WARNING: {', '.join(weighted)} have RANDOM weights" in result.stdout
    assert f"  esm2: {repo.TINY_SOURCE.name}, fp32, RANDOM WEIGHTS" in result.stdout
    page = (out / "report.html").read_text()
    assert '<p class="random">RANDOM WEIGHTS: dnabert_s, esm2, classifier_500' in page

    # The same run had it been made with real weights: no banner, the sources listed.
    for about in info["models"].values():
        about.update(random_weights=False, source="500_model.pth", source_sha256="ab" * 32)
    (out / RUN_INFO).write_text(json.dumps(info))
    page = write_report(out).read_text()
    assert 'class="random"' not in page
    assert "500_model.pth, sha256 abababababab, fp32" in page
