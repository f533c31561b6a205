"""SIGTERM, SIGHUP and Ctrl-C sent to real CLI processes (serve, predict with its embedded
server, predict --url, embed --url): each stops like Ctrl-C, leaves no tritonserver, stub, port
or hidden .partial file behind, exits 128 + the signal's number, and names --resume where a
journal holds the answers so far. A SIGKILLed parent takes its server with it."""

from __future__ import annotations

import random
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
from echo_repository import ECHO_MODEL, make_repository
from servers import port_free, processes_mentioning, wait_for

from virnucpro_triton.processes import free_port
from virnucpro_triton.results.journal import NAME as JOURNAL
from virnucpro_triton.results.outputs import PREDICTIONS
from virnucpro_triton.server import EmbeddedServer

CLI = str(Path(sys.executable).parent / "virnucpro-triton")
RESUME_HINT = "the same command with --resume goes on from here"


STARTED: list[subprocess.Popen[str]] = []


def start(*args: str | Path, wrapper: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [*wrapper, CLI, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a signal to this test's group never reaches it by accident
    )
    STARTED.append(process)
    return process


@pytest.fixture(autouse=True)
def no_process_outlives_its_test():
    """A failed assertion must not leave a `serve` (and its server) running."""
    yield
    while STARTED:
        process = STARTED.pop()
        if process.poll() is None:
            process.terminate()
            process.communicate(timeout=120)


def slow_predict(fasta: Path, out: Path, *server: str | Path) -> subprocess.Popen[str]:
    """`predict` one chunk per request, one request at a time: long enough to be stopped."""
    return start(
        "predict", fasta, "--chunk-size", "300", "-o", out, *server,
        "--batch-chunks", "1", "--max-in-flight", "1",
    )  # fmt: skip


def stop(process: subprocess.Popen[str], signum: int) -> tuple[int, str]:
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    return process.returncode, stderr


def ready(url: str) -> bool:
    try:
        with grpcclient.InferenceServerClient(url) as client:
            return client.is_server_ready(client_timeout=2)
    except Exception:  # not listening yet
        return False


@pytest.fixture
def echo_repository(tmp_path) -> Path:
    return make_repository(tmp_path / "echo", echo=ECHO_MODEL)


def serve(
    repository: Path, wrapper: tuple[str, ...] = ()
) -> tuple[subprocess.Popen[str], list[int]]:
    ports = [free_port() for _ in range(3)]
    flags = ("--grpc-port", "--http-port", "--metrics-port")
    process = start(
        "serve",
        "--repository",
        repository,
        *(x for f, p in zip(flags, ports) for x in (f, p)),
        wrapper=wrapper,
    )
    wait_for(lambda: ready(f"127.0.0.1:{ports[0]}") or process.poll() is not None, timeout=300)
    assert process.poll() is None, process.communicate()
    return process, ports


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_to_serve_stops_the_server(echo_repository, signum):
    process, ports = serve(echo_repository)
    running = processes_mentioning(str(echo_repository))
    assert process.pid in running and len(running) == 4  # the CLI, the door, tritonserver, a stub
    code, stderr = stop(process, signum)
    assert code == 128 + signum, stderr
    assert f"virnucpro-triton: stopped by {signal.Signals(signum).name}" in stderr
    assert "Traceback" not in stderr and "--resume" not in stderr
    assert processes_mentioning(str(echo_repository)) == set()
    assert all(port_free(p) for p in ports)


def test_serve_under_nohup_keeps_ignoring_sighup(echo_repository):
    process, _ = serve(echo_repository, wrapper=("nohup",))  # nohup execs the CLI
    status = Path(f"/proc/{process.pid}/status").read_text()
    ignored = int(re.search(r"^SigIgn:\s*([0-9a-f]+)", status, re.M).group(1), 16)
    assert ignored & 1 << (signal.SIGHUP - 1)
    process.send_signal(signal.SIGHUP)
    code, _ = stop(process, signal.SIGTERM)  # had the SIGHUP stopped it, the status were 129
    assert code == 143 and processes_mentioning(str(echo_repository)) == set()


def test_a_sigkilled_serve_takes_its_server_along(echo_repository):
    process, ports = serve(echo_repository)
    process.kill()
    process.wait()
    # The server gets SIGTERM from the kernel (PR_SET_PDEATHSIG) and shuts down cleanly.
    wait_for(lambda: processes_mentioning(str(echo_repository)) == set(), timeout=120)
    wait_for(lambda: all(port_free(p) for p in ports), timeout=60)


@pytest.fixture(scope="module")
def long_fasta(tmp_path_factory) -> Path:
    """One-chunk records: the predict runs are held mid-run (`hold`); the embed run, of ten
    times these, is still going when the signal comes ~940 requests before its end."""
    rng = random.Random(3)
    path = tmp_path_factory.mktemp("long") / "long.fa"
    path.write_text("".join(f">r{i}\n{''.join(rng.choices('ACGT', k=290))}\n" for i in range(3000)))
    return path


def leftovers(out_dir: Path) -> list[str]:
    return sorted(p.name for p in out_dir.glob(".*.partial"))


def assert_resumes(long_fasta: Path, out: Path, server) -> None:
    done = subprocess.run(
        [CLI, "predict", long_fasta, "--chunk-size", "300", "-o", out, "--url", server.grpc_url]
        + ["--resume", "--batch-chunks", "64"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "chunks from the stopped run" in done.stdout
    assert len((out / PREDICTIONS).read_text().splitlines()) > 1 and not (out / JOURNAL).exists()


@pytest.fixture(scope="module")
def held_server(hold, tmp_path_factory):
    log = tmp_path_factory.mktemp("held_server") / "tritonserver.log"
    with EmbeddedServer(hold.repository, log_path=log) as running:
        yield running


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_predict_url_keeps_the_journal_and_names_resume(
    server, held_server, hold, long_fasta, tmp_path, signum
):
    out = tmp_path / "out"
    with hold.holding(after=5):  # the run's 6th request is held: it is stopped mid-run
        process = slow_predict(long_fasta, out, "--url", held_server.grpc_url)
        hold.wait_held()
        code, stderr = stop(process, signum)
    assert code == 128 + signum, stderr
    assert f"stopped by {signal.Signals(signum).name}; {RESUME_HINT}" in stderr
    assert "Traceback" not in stderr and "Aborted" not in stderr
    assert leftovers(out) == [] and (out / JOURNAL).exists()
    assert not (out / PREDICTIONS).exists()
    assert_resumes(long_fasta, out, server)


def test_sigterm_to_predict_stops_its_embedded_server(server, hold, long_fasta, tmp_path):
    repository = tmp_path / "repository"  # a path of its own: the session server shares none
    shutil.copytree(hold.repository, repository)
    out = tmp_path / "out"
    with hold.holding(after=5):  # the run's 6th request is held: it is stopped mid-run
        process = slow_predict(long_fasta, out, "--repository", repository)
        hold.wait_held()
        process.send_signal(signal.SIGTERM)
        hold.release()  # the server's graceful stop waits for the request it holds
        _, stderr = process.communicate(timeout=120)
    code = process.returncode
    assert code == 143, stderr
    assert f"stopped by SIGTERM; {RESUME_HINT}" in stderr
    assert processes_mentioning(str(repository)) == set()
    assert leftovers(out) == []
    assert_resumes(long_fasta, out, server)


def embedded(server, model: str) -> int:
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        stats = client.get_inference_statistics(model, as_json=True)
    return int(stats["model_stats"][0]["inference_stats"]["success"].get("count", 0))


def test_sigterm_to_embed_url_leaves_no_partial_output(server, long_fasta, tmp_path):
    many = tmp_path / "many.fa"  # ten times the records: embedding is faster than classifying
    records = long_fasta.read_text().splitlines()[1::2] * 10
    many.write_text("".join(f">e{i}\n{sequence}\n" for i, sequence in enumerate(records)))
    out = tmp_path / "out" / "dna.npy"
    before = embedded(server, "dnabert_s")
    process = start("embed", many, "--model", "dnabert_s", "-o", out, "--url", server.grpc_url)
    wait_for(lambda: embedded(server, "dnabert_s") > before or process.poll() is not None, 300)
    code, stderr = stop(process, signal.SIGTERM)
    assert code == 143, stderr
    assert "stopped by SIGTERM" in stderr and "--resume" not in stderr
    assert not out.parent.exists() or list(out.parent.iterdir()) == []
