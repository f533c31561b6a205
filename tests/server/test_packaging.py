"""The wheel, installed non-editable into fresh venvs by role: the client alone (no torch, no
tritonserver) works against a server as the editable install does; [server,export] exports and
serves, with each entry's model.py made from its spec."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from virnucpro_triton import repository as repo
from virnucpro_triton.export.fp8_choice import probe_frames
from virnucpro_triton.processes import free_port
from virnucpro_triton.results.outputs import PREDICTIONS, SUMMARY, VERDICTS

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[2]
EDITABLE = Path(sys.executable).parent
READS = ROOT / "examples" / "reads.fasta"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + [str(ROOT), "-w", str(out)],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("virnucpro_triton-*.whl")
    return built


def install(root: Path, requirement: str) -> Path:
    """A fresh venv with `requirement`; the lock's pins as constraints, so pip takes this
    machine's CPU torch and the versions .venv was tested with (from its cache)."""
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
    pip = [str(root / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run(
        [*pip, "-c", str(ROOT / "requirements.lock"), requirement],
        check=True,
        capture_output=True,
        timeout=1200,
    )
    return root / "bin"


@pytest.fixture(scope="module")
def client(wheel, tmp_path_factory) -> Path:
    return install(tmp_path_factory.mktemp("client") / "venv", str(wheel))


@pytest.fixture(scope="module")
def server_install(wheel, tmp_path_factory) -> Path:
    return install(tmp_path_factory.mktemp("server") / "venv", f"{wheel}[server,export]")


def run(bin_dir: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(bin_dir / "virnucpro-triton"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_client_install_has_neither_torch_nor_tritonserver(client):
    for module in ("torch", "pytriton", "safetensors", "tokenizers"):
        found = subprocess.run([client / "python", "-c", f"import {module}"], capture_output=True)
        assert found.returncode != 0, f"{module} is installed with the client"


def test_the_client_install_predicts_embeds_and_reports_like_the_editable_one(
    client, server, mixed_fasta, tmp_path
):
    for name, bin_dir in (("wheel", client), ("editable", EDITABLE)):
        out = tmp_path / name
        predicted = run(bin_dir, "predict", mixed_fasta, "--chunk-size", 300, "-o", out / "run",
                        "--url", server.grpc_url, "--no-progress", "--report")  # fmt: skip
        assert predicted.returncode == 0, predicted.stderr
        embedded = run(bin_dir, "embed", READS, "--model", repo.DNABERT_S,
                       "-o", out / "dna.npy", "--url", server.grpc_url)  # fmt: skip
        assert embedded.returncode == 0, embedded.stderr
        chunked = run(bin_dir, "preprocess", mixed_fasta, "--chunk-size", 300,
                      "--out-dir", out / "p")  # fmt: skip
        assert chunked.returncode == 0, chunked.stderr
    wheel, editable = tmp_path / "wheel", tmp_path / "editable"
    for name in (PREDICTIONS, VERDICTS, SUMMARY):
        assert (wheel / "run" / name).read_bytes() == (editable / "run" / name).read_bytes()
    assert (wheel / "run" / "report.html").stat().st_size > 10_000
    np.testing.assert_array_equal(np.load(wheel / "dna.npy"), np.load(editable / "dna.npy"))
    for made in sorted((editable / "p").iterdir()):
        assert (wheel / "p" / made.name).read_bytes() == made.read_bytes()


def test_the_client_install_names_the_extras_it_lacks(
    client, tiny_repository, mixed_fasta, tmp_path
):
    served = run(client, "predict", mixed_fasta, "--chunk-size", 300, "-o", tmp_path / "out",
                 "--repository", tiny_repository)  # fmt: skip
    exported = run(client, "export", "--tiny", "--out", tmp_path / "repository")
    serving = run(client, "serve", "--repository", tiny_repository)
    for result, extra in (
        (served, "virnucpro-triton[server]"),
        (exported, "[export]"),
        (serving, "virnucpro-triton[server]"),
    ):
        assert result.returncode == 1
        (line,) = result.stderr.splitlines()
        assert line.startswith("virnucpro-triton: error: ") and extra in line


def test_the_server_install_exports_and_serves(server_install, mixed_fasta, tmp_path):
    repository = tmp_path / "repository"
    exported = run(server_install, "export", "--tiny", "--out", repository)
    assert exported.returncode == 0, exported.stderr
    for spec in repo.entry_specs().values():
        if spec.model:
            written = repository / spec.name / "1" / repo.MODEL_PY
            assert written.read_text() == repo.model_py(spec)
    # FP8's probe frames are package data: the wheel must carry them.
    count = (
        "from virnucpro_triton.export import fp8_choice; print(len(fp8_choice.probe_frames(300)))"
    )
    probe = subprocess.run([server_install / "python", "-c", count], capture_output=True, text=True)
    assert probe.stdout.strip() == str(len(probe_frames(300))), probe.stderr
    grpc_port = free_port()
    serving = subprocess.Popen(
        [server_install / "virnucpro-triton", "serve", "--repository", repository,
         "--grpc-port", str(grpc_port), "--http-port", str(free_port()),
         "--metrics-port", str(free_port())],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = serving.stdout.readline()  # once ready; empty when serve failed and exited
        assert line.startswith(f"serving {repository}"), serving.stderr.read()
        with grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}") as triton:
            assert triton.is_model_ready(repo.PIPELINE)
        predicted = run(server_install, "predict", mixed_fasta, "--chunk-size", 500,
                        "-o", tmp_path / "out", "--url", f"127.0.0.1:{grpc_port}")  # fmt: skip
        assert predicted.returncode == 0, predicted.stderr
    finally:
        serving.send_signal(signal.SIGINT)
        serving.wait(120)
    assert serving.returncode == 130  # stopped by Ctrl-C: 128 + SIGINT, as every command
