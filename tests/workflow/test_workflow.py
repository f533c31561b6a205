"""workflow/: snakemake from PyPI (.venv-workflow) runs one predict job per sample against a
real tritonserver (the shared `server` fixture through `urls`, or embedded servers), merges the
summaries, reruns only what is missing and resumes a stopped sample from its journal."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import secrets
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from certificates import make_certificates
from reference import same_table
from servers import wait_for
from workflow_runs import (
    CLI,
    COMPARED,
    OUTPUTS,
    ROOT,
    SNAKEFILE,
    SNAKEMAKE,
    THRESHOLDS,
    jobs_run,
    journaled_chunks,
    predict_directly,
    write_project,
)

from virnucpro_triton.door.settings import AccessSettings
from virnucpro_triton.server import EmbeddedServer

ERROR = "virnucpro-triton workflow: error: "


def snakemake(workdir: Path, *args: str, **popen) -> subprocess.Popen[str]:
    assert SNAKEMAKE.exists(), f"{SNAKEMAKE} is missing: `make workflow-venv` installs it"
    return subprocess.Popen(
        [
            SNAKEMAKE,
            "--snakefile",
            SNAKEFILE,
            "--directory",
            workdir,
            "--configfile",
            workdir / "config.yaml",
            "--cores",
            "1",
            *args,
        ],  # fmt: skip
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,
    )


def run_workflow(workdir: Path, *args: str) -> str:
    """A complete snakemake run; its output."""
    with snakemake(workdir, *args) as process:
        output, _ = process.communicate(timeout=900)
    assert process.returncode == 0, output[-4000:]
    return output


def assert_same_results(out: Path, reference: Path) -> None:
    for name in COMPARED:
        assert same_table((out / name).read_bytes(), (reference / name).read_bytes()), name


@pytest.fixture(scope="module")
def two_samples(mixed_fasta, contigs, tmp_path_factory) -> dict[str, list[Path]]:
    """`contigs`: one plain FASTA; `mixed`: a gzip FASTA and a plain one, joined by the workflow."""
    folder = tmp_path_factory.mktemp("samples")
    gzipped = folder / "mixed.fa.gz"
    gzipped.write_bytes(gzip.compress(mixed_fasta.read_bytes()))
    return {"contigs": [contigs], "mixed": [gzipped, ROOT / "examples" / "reads.fasta"]}


# One request at a time: the server batches nothing across requests, so the workflow's runs and
# the direct ones compute the same batches and can be compared to the last digit.
ONE_AT_A_TIME = {"max_in_flight": 1}
SLOW = {"batch_chunks": 1, "max_in_flight": 1}  # one chunk per request: long enough to stop


@pytest.fixture(scope="module")
def direct(server, two_samples, tmp_path_factory) -> dict[str, Path]:
    """Each sample's output of a direct predict run (the mixed one on its files concatenated)."""
    folder = tmp_path_factory.mktemp("direct")
    joined = folder / "mixed-joined.fa"
    texts = [gzip.decompress(two_samples["mixed"][0].read_bytes()).decode()]
    texts.append(two_samples["mixed"][1].read_text())
    joined.write_text("".join(text if text.endswith("\n") else text + "\n" for text in texts))
    url = server.grpc_url
    return {
        "contigs": predict_directly(
            two_samples["contigs"][0], folder / "contigs", url, "--max-in-flight", "1"
        ),
        "mixed": predict_directly(joined, folder / "mixed", url, "--max-in-flight", "1"),
    }


@pytest.fixture(scope="module")
def slow_sample(server, contigs, tmp_path_factory) -> tuple[Path, Path]:
    """15 contigs (~50 chunks) and their direct predict output, one chunk per request."""
    folder = tmp_path_factory.mktemp("slow")
    fasta = folder / "contigs15.fa"
    fasta.write_text("".join(">" + r for r in contigs.read_text().split(">")[1:16]))
    options = ["--batch-chunks", "1", "--max-in-flight", "1"]
    return fasta, predict_directly(fasta, folder / "direct", server.grpc_url, *options)


def test_two_samples_against_a_server_merged_and_rerun_only_where_missing(
    server, two_samples, direct, tmp_path
):
    predict = {**THRESHOLDS, **ONE_AT_A_TIME}
    write_project(tmp_path, two_samples, urls=[server.grpc_url], predict=predict)
    output = run_workflow(tmp_path)
    assert jobs_run(output) == {"join_inputs": 1, "predict": 2, "merge": 1, "all": 1}
    results = tmp_path / "results"
    for sample in two_samples:
        assert_same_results(results / sample, direct[sample])
        assert not (results / sample / ".predict-journal").exists()
    assert not (results / "mixed" / "joined_input.fasta").exists()  # temp(): gone once used

    # One summary: every sample's rows, in sheet order, behind a `sample` column.
    merged = (results / "sequence_summary.tsv").read_text().splitlines()
    header = (results / "contigs" / "sequence_summary.tsv").read_text().splitlines()[0]
    assert merged[0] == f"sample\t{header}"
    expected = [
        f"{sample}\t{line}"
        for sample in two_samples
        for line in (results / sample / "sequence_summary.tsv").read_text().splitlines()[1:]
    ]
    assert merged[1:] == expected
    assert {line.split("\t")[0] for line in merged[1:]} == {"contigs", "mixed"}
    # The viruses of both samples, each header naming its sample after the record's id.
    rows = [row.split("\t") for row in merged[1:]]
    viral = [
        (row[0], row[1]) for row in rows if row[1 + header.split("\t").index("verdict")] == "viral"
    ]
    assert viral, "the thresholds call some records viral"
    headers = [
        line[1:].split()
        for line in (results / "virus.fna").read_text().splitlines()
        if line.startswith(">")
    ]
    assert [(words[1], words[0]) for words in headers] == [
        (f"sample={sample}", record) for sample, record in viral
    ]

    # A complete run is not redone; a sample whose output went is, and only it.
    assert jobs_run(run_workflow(tmp_path)) == {}
    kept = (results / "contigs" / "run.json").stat().st_mtime_ns
    (results / "mixed" / "sequence_summary.tsv").unlink()
    assert jobs_run(run_workflow(tmp_path)) == {
        "join_inputs": 1,
        "predict": 1,
        "merge": 1,
        "all": 1,
    }
    assert (results / "contigs" / "run.json").stat().st_mtime_ns == kept
    assert_same_results(results / "mixed", direct["mixed"])


@pytest.mark.slow
@pytest.mark.parametrize(
    "signum",
    [signal.SIGINT, signal.SIGTERM, signal.SIGKILL],
    ids=["ctrl-c", "terminated", "killed"],
)
def test_a_stopped_sample_leaves_no_output_and_goes_on_from_its_journal(
    server, slow_sample, tmp_path, signum
):
    fasta, direct = slow_sample
    predict = {**THRESHOLDS, **SLOW}
    write_project(tmp_path, {"contigs": [fasta]}, urls=[server.grpc_url], predict=predict)
    out = tmp_path / "results" / "contigs"
    journal = out / ".predict-journal"
    # Ctrl-C at a terminal reaches the whole foreground group, as SLURM's scancel (SIGTERM) does
    # a job's processes; a crash kills them all at once.
    with snakemake(tmp_path, start_new_session=True) as process:
        try:
            wait_for(lambda: journaled_chunks(journal) >= 5 or process.poll() is not None, 300)
            assert process.poll() is None, "the run ended before it could be stopped"
        finally:
            os.killpg(process.pid, signum)
        output, _ = process.communicate(timeout=300)
    assert process.returncode != 0, output[-3000:]
    assert [name for name in OUTPUTS if (out / name).exists()] == []  # nothing looks complete
    stopped_at = journaled_chunks(journal)
    assert stopped_at >= 5

    if signum == signal.SIGKILL:  # no snakemake was left to release its lock
        assert "LockException" in snakemake(tmp_path).communicate(timeout=120)[0]
        run_workflow(tmp_path, "--unlock")  # as its message says
    assert jobs_run(run_workflow(tmp_path)) == {"predict": 1, "merge": 1, "all": 1}
    counts = json.loads((out / "run.json").read_text())["counts"]
    assert stopped_at - 1 <= counts["resumed_chunks"] <= stopped_at  # a torn last block is redone
    assert counts["resumed_chunks"] < counts["chunks"]
    assert_same_results(out, direct)
    assert not journal.exists()


def answers(url: str) -> bool:
    host, port = url.rsplit(":", 1)
    with socket.socket() as s:
        return s.connect_ex((host, int(port))) == 0


@pytest.mark.slow
def test_embedded_shared_server_serves_every_job_and_stops_with_the_run(tiny_repository, tmp_path):
    """With `token_file`, the shared server asks for it and the jobs send it."""
    samples = {name: [ROOT / "examples" / f"{name}.fasta"] for name in ("contigs", "reads")}
    token = tmp_path / "token"
    token.write_text(secrets.token_hex(32) + "\n")
    wrapper, argv = recording_cli(tmp_path)
    write_project(
        tmp_path, samples, repository=str(tiny_repository), embedded="shared",
        token_file=str(token), virnucpro_triton=str(wrapper),
    )  # fmt: skip
    output = run_workflow(tmp_path)
    assert jobs_run(output) == {"predict": 2, "merge": 1, "all": 1}
    runs = [json.loads((tmp_path / "results" / name / "run.json").read_text()) for name in samples]
    urls = {url for run in runs for url in run["settings"]["urls"]}
    assert len(urls) == 1  # one server, started once, answered both jobs
    assert [run["start_seconds"] for run in runs] == [None, None]  # not one started per job
    assert [run["settings"]["auth"] for run in runs] == ["token", "token"]
    commands = argv.read_text().splitlines()
    assert [c.split()[0] for c in commands].count("serve") == 1
    assert all(f"--token-file {token}" in c for c in commands)
    assert not answers(urls.pop())  # stopped when the run ended
    log = (tmp_path / "results" / "logs" / "shared-server.log").read_text()
    assert "stopped by SIGTERM" in log
    for name in samples:
        assert (tmp_path / "results" / name / "report.html").exists()  # predict.report: default


@pytest.mark.slow
def test_embedded_per_job_each_job_starts_its_own_server(tiny_repository, tmp_path):
    samples = {"reads": [ROOT / "examples" / "reads.fasta"]}
    write_project(tmp_path, samples, repository=str(tiny_repository), embedded="per_job")
    output = run_workflow(tmp_path, "--resources", "virnucpro_server=1")
    assert jobs_run(output) == {"predict": 1, "merge": 1, "all": 1}
    run = json.loads((tmp_path / "results" / "reads" / "run.json").read_text())
    assert run["start_seconds"] > 0
    assert not (tmp_path / "results" / "logs" / "shared-server.log").exists()


def recording_cli(folder: Path) -> tuple[Path, Path]:
    """The CLI behind a wrapper that appends each command line to a file: (wrapper, file)."""
    argv = folder / "argv.log"
    wrapper = folder / "virnucpro-triton"
    wrapper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{argv}"\nexec "{CLI}" "$@"\n')
    wrapper.chmod(0o755)
    return wrapper, argv


@pytest.fixture(scope="module")
def guarded_server(tiny_repository, tmp_path_factory):
    """A server asking for a token over TLS: (the server, its CA, a client's token file)."""
    folder = tmp_path_factory.mktemp("guarded")
    make_certificates(folder, {})
    token = folder / "token"
    token.write_text(secrets.token_hex(32) + "\n")
    access = AccessSettings(
        token_file=token, tls_cert=folder / "server.pem", tls_key=folder / "server.key"
    )
    with EmbeddedServer(tiny_repository, access=access, log_path=folder / "server.log") as running:
        yield running, folder / "ca.pem", token


def test_token_and_tls_of_the_config_reach_the_jobs_but_no_command_line(
    guarded_server, two_samples, direct, tmp_path
):
    """Each job gets the files' paths: the token is on no command line (`ps` shows them all:
    the CLI here is a wrapper that records its own), nor in any log, run.json or report."""
    guarded, ca, token = guarded_server
    wrapper, argv = recording_cli(tmp_path)
    samples = {"contigs": two_samples["contigs"]}
    predict = {**THRESHOLDS, **ONE_AT_A_TIME}
    write_project(
        tmp_path, samples, urls=[guarded.grpc_url], predict=predict, virnucpro_triton=str(wrapper),
        token_file=str(token), tls={"ca": str(ca)},
    )  # fmt: skip
    output = run_workflow(tmp_path)
    assert jobs_run(output) == {"predict": 1, "merge": 1, "all": 1}
    results = tmp_path / "results"
    assert_same_results(results / "contigs", direct["contigs"])
    run = json.loads((results / "contigs" / "run.json").read_text())["settings"]
    assert (run["auth"], run["tls"]) == ("token", True)
    (command,) = [line for line in argv.read_text().splitlines() if line.startswith("predict ")]
    assert f"--token-file {token} --tls-ca {ca}" in command
    secret = token.read_text().strip()
    texts = [output, argv.read_text(), guarded.log_path.read_text()]
    texts += [p.read_text(errors="replace") for p in results.rglob("*") if p.is_file()]
    assert not [text for text in texts if secret in text]


READS = str(ROOT / "examples" / "reads.fasta")
ONE = f"sample\tfasta\nS1\t{READS}\n"  # a good sheet, for the config's cases
BAD = [
    ("bad-name", f"sample\tfasta\na b\t{READS}\n", {}, "line 2: column sample: 'a b': a sample"),
    (
        "duplicate",
        f"sample\tfasta\nS1\t{READS}\nS2\t{READS}\nS1\t{READS}\n",
        {},
        "samples.tsv line 4: sample 'S1' is already on line 2",
    ),
    ("missing", "sample\tfasta\nS1\tnowhere.fa\n", {}, "line 2: sample 'S1': nowhere.fa does not"),
    ("directory", f"sample\tfasta\nS1\t{READS},{ROOT}\n", {}, f"'S1': {ROOT} is not a file"),
    ("header", f"name\tfasta\nS1\t{READS}\n", {}, "line 1: the header lacks the column(s) sample"),
    ("reserved", f"sample\tfasta\nlogs\t{READS}\n", {}, "sample 'logs': the name is taken"),
    ("chunk", ONE, {"predict": {"chunk_size": 400}}, "predict.chunk_size: 400 is not one of [300,"),
    ("url", ONE, {"urls": ["gpu1"]}, "config urls.0: 'gpu1': a server's gRPC address is HOST:"),
    ("key", ONE, {"threds": 2}, "config (top level): Additional properties are not allowed ('thr"),
    ("cli", ONE, {"virnucpro_triton": "no-cli"}, "virnucpro_triton: 'no-cli' is neither a command"),
    (
        "token",
        ONE,
        {"urls": ["h:1"], "token_file": "nowhere"},
        "config token_file: nowhere does not",
    ),
    (
        "ca",
        ONE,
        {"urls": ["h:1"], "tls": {"ca": str(ROOT)}},
        f"config tls.ca: {ROOT} is not a file",
    ),
    (
        "client-key",
        ONE,
        {"urls": ["h:1"], "tls": {"client_cert": READS}},
        "config tls: 'client_key' is a",
    ),
    ("tls", ONE, {"tls": True}, "config tls: TLS is for the servers in urls or urls_file"),
    ("per-job", ONE, {"embedded": "per_job", "token_file": READS}, "per_job servers that predict"),
]


@pytest.mark.parametrize("sheet, config, message", [pytest.param(*b[1:], id=b[0]) for b in BAD])
def test_bad_sample_sheet_or_config_is_refused_in_one_line(tmp_path, sheet, config, message):
    write_project(tmp_path, {}, **config)
    (tmp_path / "samples.tsv").write_text(sheet)
    with snakemake(tmp_path, "--dry-run") as process:
        output, _ = process.communicate(timeout=120)
    assert process.returncode == 1
    errors = [line for line in output.splitlines() if line.startswith(ERROR)]
    assert len(errors) == 1 and message in errors[0], output
    assert "Traceback" not in output and 'File "' not in output


def test_a_path_with_braces_is_refused_by_the_sheet_check_in_one_line(tmp_path):
    write_project(tmp_path, {})
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "{sample}.fa").write_text(Path(READS).read_text())
    (tmp_path / "samples.tsv").write_text(f"sample\tfasta\nS1\t{READS}\nS2\tdata/{{sample}}.fa\n")
    with snakemake(tmp_path, "--dry-run") as process:
        output, _ = process.communicate(timeout=120)
    assert process.returncode == 1
    errors = [line for line in output.splitlines() if line.startswith(ERROR)]
    assert errors == [
        f"{ERROR}samples.tsv line 3: sample 'S2': data/{{sample}}.fa: Snakemake reads braces in "
        "a path as a wildcard; rename the file (or link it) without them"
    ], output
    assert "Traceback" not in output


def test_sample_files_named_like_options_or_stdin_are_read_as_files(server, tmp_path):
    write_project(tmp_path, {}, urls=[server.grpc_url], predict=THRESHOLDS)
    for name in ["--help", "-"]:
        (tmp_path / name).write_text(Path(READS).read_text())
    (tmp_path / "samples.tsv").write_text("sample\tfasta\nhelp\t--help\ndash\t-\n")
    run_workflow(tmp_path)
    reference = predict_directly(Path(READS), tmp_path / "direct", server.grpc_url)
    for sample in ["help", "dash"]:
        assert_same_results(tmp_path / "results" / sample, reference)


def test_planted_symlinks_in_the_results_are_never_followed(server, tmp_path):
    write_project(tmp_path, {"reads": [Path(READS)]}, urls=[server.grpc_url])
    results = tmp_path / "results"
    (results / "reads").mkdir(parents=True)
    victims = {}
    for planted in [
        "sequence_summary.tsv.partial",
        "virus.fna.partial",
        "reads/.virus.fna.partial",
    ]:
        victims[planted] = tmp_path / f"victim-{len(victims)}"
        victims[planted].write_text("the user's own file\n")
        (results / planted).symlink_to(victims[planted])
    run_workflow(tmp_path)
    for victim in victims.values():
        assert victim.read_text() == "the user's own file\n"
    assert not [p for p in results.rglob("*.partial")]
    assert (results / "sequence_summary.tsv").read_text().startswith("sample\tid\t")


def test_a_sample_predict_refuses_fails_its_job_naming_sample_and_reason(server, tmp_path):
    bad = tmp_path / "notes.fa"
    bad.write_text("these are notes, not sequences\n")
    write_project(tmp_path, {"notes": [bad]}, urls=[server.grpc_url])
    with snakemake(tmp_path) as process:
        output, _ = process.communicate(timeout=300)
    assert process.returncode == 1
    assert re.search(
        r"sample notes: predict exited with status 1: virnucpro-triton: error: .*notes\.fa", output
    ), output
    out = tmp_path / "results" / "notes"
    assert [name for name in OUTPUTS if (out / name).exists()] == []


def test_shared_server_that_cannot_start_stops_the_run_in_one_line(tmp_path):
    samples = {"reads": [ROOT / "examples" / "reads.fasta"]}
    write_project(tmp_path, samples, repository=str(tmp_path / "no-repository"))
    with snakemake(tmp_path) as process:
        output, _ = process.communicate(timeout=300)
    assert process.returncode == 1
    errors = [line for line in output.splitlines() if line.startswith(ERROR)]
    assert len(errors) == 1, output
    assert "the shared server exited with status 1 while starting" in errors[0]
    assert "no-repository cannot serve this run: it does not exist" in errors[0]
    assert "Traceback" not in output


def serve_processes(parent: int) -> list[int]:
    """Pids of the `virnucpro-triton serve` children of `parent`."""
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    return [
        int(pid)
        for pid in children
        if b"serve" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    ]


def alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_shared_server_goes_when_snakemake_is_killed(tiny_repository, slow_sample, tmp_path):
    fasta, _ = slow_sample
    write_project(tmp_path, {"contigs": [fasta]}, repository=str(tiny_repository), predict=SLOW)
    with snakemake(tmp_path, start_new_session=True) as process:
        try:
            log = tmp_path / "results" / "logs" / "shared-server.log"
            wait_for(lambda: log.exists() and "serving" in log.read_text(), 300)
            (serve,) = serve_processes(process.pid)
            process.kill()  # snakemake alone, as the OOM killer would: no onerror runs
            process.wait(timeout=60)
            wait_for(lambda: not alive(serve), 120)
        finally:
            with contextlib.suppress(ProcessLookupError):  # the orphaned job and its predict
                os.killpg(process.pid, signal.SIGKILL)
    assert "stopped by SIGTERM" in log.read_text()
