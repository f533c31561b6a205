"""The cluster tier: the project on a real one-node SLURM cluster (slurm_cluster.py beside this
file; make test-cluster, root on Debian). A server job (slurm/serve.sbatch) writes its address
file; the workflow runs with `--executor slurm` (workflow/profiles/slurm) against it and matches a
direct `predict`; a cancelled sample job goes on from its journal; a cancelled server job ends the
sample jobs in one line each and leaves nothing on the node; per-job embedded servers get a GPU
each."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from servers import port_free, processes_mentioning, wait_for
from slurm_cluster import KILL_WAIT, Cluster, poll
from workflow_runs import (
    CLI,
    COMPARED,
    OUTPUTS,
    SNAKEFILE,
    SNAKEMAKE,
    THRESHOLDS,
    jobs_run,
    journaled_chunks,
    predict_directly,
    write_project,
)

from virnucpro_triton.credentials import AUTH_HEADER, TOKEN_FILE_ENV, bearer, read_tokens
from virnucpro_triton.processes import free_port
from virnucpro_triton.server import SHM_DIR

ROOT = Path(__file__).parents[2]
SERVE_JOB = ROOT / "slurm" / "serve.sbatch"
PROFILE = ROOT / "workflow" / "profiles" / "slurm"
sys.path.insert(0, str(ROOT / "workflow" / "scripts"))
import jobs  # noqa: E402  (the workflow's merge, to build the expected merged files)

# One chunk per request, one request at a time: a run long enough to be stopped, whose requests
# the server answers alone (so results match a direct run's to the byte).
SLOW = {"batch_chunks": 1, "max_in_flight": 1}
SLOW_OPTIONS = ["--batch-chunks", "1", "--max-in-flight", "1"]
SAMPLES = ("slow", "mixed")


@pytest.fixture(scope="module", autouse=True)
def token(tmp_path_factory):
    """An access token for the server jobs and every client: jobs inherit the environment."""
    path = tmp_path_factory.mktemp("token") / "token"
    with open(path, "w") as out:
        subprocess.run(["openssl", "rand", "-hex", "32"], stdout=out, check=True)
    path.chmod(0o600)
    before = os.environ.get(TOKEN_FILE_ENV)
    os.environ[TOKEN_FILE_ENV] = str(path)
    yield path
    if before is None:
        del os.environ[TOKEN_FILE_ENV]
    else:
        os.environ[TOKEN_FILE_ENV] = before


@pytest.fixture(scope="module")
def cluster():
    running = Cluster()
    try:
        yield running.start()
    finally:
        running.stop()
        left = running.processes()
        running.remove()
        assert left == set(), f"processes of the test cluster left running: {sorted(left)}"


class ServerJob:
    """slurm/serve.sbatch submitted with its settings in the environment, as a user would."""

    def __init__(self, cluster: Cluster, repository: Path, folder: Path) -> None:
        self.cluster, self.repository = cluster, repository
        self.address_file = folder / "server.address"
        self.ports = {"GRPC": free_port(), "HTTP": free_port(), "METRICS": free_port()}
        self.log = folder / f"server-{len(list(folder.glob('server-*.log')))}.log"
        settings = {f"VIRNUCPRO_{name}_PORT": str(port) for name, port in self.ports.items()}
        self.job = cluster.sbatch(
            "--gres=gpu:1", "--cpus-per-task=1", "--mem=1G", f"--output={self.log}", SERVE_JOB,
            env={
                **settings,
                "VIRNUCPRO_REPOSITORY": str(repository),
                "VIRNUCPRO_ADDRESS_FILE": str(self.address_file),
                "VIRNUCPRO_TRITON": CLI,
            },
        )  # fmt: skip
        poll(self._ready, 300, f"server job {self.job} to write {self.address_file}")
        self.address = self.address_file.read_text().strip()
        self.host = self.address.rpartition(":")[0]

    def _ready(self) -> bool:
        if not self.cluster.queued(self.job):
            log = self.log.read_text() if self.log.exists() else "(no log)"
            raise AssertionError(f"server job {self.job} ended: {log[-3000:]}")
        return self.address_file.exists()

    def requests(self) -> int:
        """Pipeline requests the server answered, from Triton's metrics."""
        url = f"http://{self.host}:{self.ports['METRICS']}/metrics"
        token = read_tokens(Path(os.environ[TOKEN_FILE_ENV]))[0]
        request = urllib.request.Request(url, headers={AUTH_HEADER: bearer(token)})
        with urllib.request.urlopen(request, timeout=30) as answer:
            text = answer.read().decode()
        found = re.search(
            r'^nv_inference_request_success\{model="virnucpro",[^}]*\} (\d+)', text, re.M
        )
        assert found, text[:2000]
        return int(found.group(1))

    def regions(self) -> list[str]:
        """Its tritonserver's shared-memory regions, by the prefix on its command line."""
        (prefix,) = {
            match
            for pid in processes_mentioning(str(self.repository))
            for match in re.findall(
                r"shm-region-prefix-name=(virnucpro_triton_[0-9a-f]+_)",
                Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"),
            )
        }
        return [region.name for region in SHM_DIR.glob(f"{prefix}*")]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("slurm")


@pytest.fixture(scope="module")
def server_job(cluster, hold, folder) -> ServerJob:
    """The first server job, on a repository whose classifier holds requests on the word of a
    test (`hold`): a run is stopped mid-run by an event, never by a timing."""
    return ServerJob(cluster, hold.repository, folder)


@pytest.fixture(scope="module")
def samples(contigs, mixed_fasta, folder) -> dict[str, list[Path]]:
    """`slow`: 15 contigs (~50 chunks); `mixed`: the mixed records."""
    slow = folder / "slow.fa"
    slow.write_text("".join(">" + r for r in contigs.read_text().split(">")[1:16]))
    return {"slow": [slow], "mixed": [mixed_fasta]}


@pytest.fixture(scope="module")
def direct(server_job, samples, folder) -> dict[str, Path]:
    """Each sample through `predict --url @FILE` (the server job's address file) directly."""
    return {
        name: predict_directly(
            paths[0], folder / "direct" / name, f"@{server_job.address_file}", *SLOW_OPTIONS
        )
        for name, paths in samples.items()
    }


STARTED: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def no_run_outlives_its_test():
    """A failed assertion must not leave a snakemake (and its SLURM jobs) running: on SIGTERM
    it cancels its jobs."""
    yield
    while STARTED:
        process = STARTED.pop()
        if process.poll() is None:
            process.terminate()
            try:
                process.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()


def snakemake(cluster: Cluster, workdir: Path, *args: str) -> subprocess.Popen[str]:
    """snakemake with the SLURM profile; status checks from the first second (the plugin's
    default waits 40 s before the first)."""
    process = subprocess.Popen(
        [
            SNAKEMAKE,
            "--snakefile",
            SNAKEFILE,
            "--directory",
            workdir,
            "--configfile",
            workdir / "config.yaml",
            "--profile",
            PROFILE,
            "--slurm-init-seconds-before-status-checks",
            "1",
            *args,
        ],  # fmt: skip
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=cluster.env,
    )
    STARTED.append(process)
    return process


def finished(process: subprocess.Popen[str]) -> str:
    output, _ = process.communicate(timeout=600)
    return output


def submitted(output: str) -> list[str]:
    """The SLURM job ids of a snakemake run's jobs."""
    return re.findall(r"has been submitted with SLURM jobid (\d+)", output)


def assert_as_direct(results: Path, direct: dict[str, Path], folder: Path) -> None:
    """Each sample's files byte-identical to its direct run; the merged files to those the
    workflow's merge makes of the direct runs."""
    for sample, reference in direct.items():
        for name in COMPARED:
            assert (results / sample / name).read_bytes() == (reference / name).read_bytes(), name
        assert not (results / sample / ".predict-journal").exists()
    expected = folder / "merged"
    expected.mkdir(exist_ok=True)
    jobs.merge_summaries(
        {s: str(direct[s] / jobs.SUMMARY) for s in SAMPLES}, str(expected / jobs.SUMMARY)
    )
    jobs.merge_viruses(
        {s: str(direct[s] / jobs.VIRUSES) for s in SAMPLES}, str(expected / jobs.VIRUSES)
    )
    for name in (jobs.SUMMARY, jobs.VIRUSES):
        assert (results / name).read_bytes() == (expected / name).read_bytes(), name


def project(workdir: Path, samples, extra: tuple[str, ...] = (), **config) -> None:
    write_project(workdir, samples, predict={**THRESHOLDS, **SLOW, "extra": list(extra)}, **config)


def test_server_job_serves_a_two_sample_workflow_run_by_slurm(
    cluster, server_job, samples, direct, folder, tmp_path
):
    # The job took the GPU SLURM granted, and serves on the node's address.
    assert "gres/gpu=1" in cluster.accounted(server_job.job, "AllocTRES")
    assert re.search(r"GPUs [0-9]", server_job.log.read_text()), server_job.log.read_text()
    assert server_job.address == f"{server_job.host}:{server_job.ports['GRPC']}"

    project(tmp_path, samples, urls_file=str(server_job.address_file))
    output = finished(snakemake(cluster, tmp_path))
    assert "Nothing to be done" not in output and jobs_run(output) == {
        "predict": 2, "merge": 1, "all": 1,
    }, output[-4000:]  # fmt: skip
    assert_as_direct(tmp_path / "results", direct, folder)
    predict_jobs = submitted(output)
    assert len(predict_jobs) == 2  # merge and all are local rules
    for job in predict_jobs:  # clients of a running server: no GPU of their own
        state, tres = cluster.accounted(job, "State,AllocTRES").split("|")
        assert state == "COMPLETED" and "gpu" not in tres, (state, tres)


def test_a_cancelled_sample_job_goes_on_from_its_journal_asking_no_chunk_twice(
    cluster, server_job, hold, samples, direct, folder, tmp_path
):
    project(tmp_path, samples, urls_file=str(server_job.address_file))
    results = tmp_path / "results"
    start = server_job.requests()
    with hold.holding(after=5):  # the 6th request is held: the job asking it is mid-run
        run = snakemake(cluster, tmp_path, "--jobs", "1")  # the held job is the one running
        hold.wait_held()
        (job,) = cluster.running("rule_predict")
        comment = cluster.run("squeue", "-h", "-j", job, "-o", "%k").stdout.strip()
        sample = next(s for s in SAMPLES if comment.endswith(s))  # rule_predict_wildcards_NAME
        journal = results / sample / ".predict-journal"
        stopped_at = journaled_chunks(journal)
        cluster.scancel(job)
        wait_for(lambda: not cluster.queued(job), 120)
    output = finished(run)
    assert run.returncode != 0, output[-3000:]
    assert f"SLURM-job '{job}' failed, SLURM status is: 'CANCELLED'" in output, output[-3000:]
    assert [name for name in OUTPUTS if (results / sample / name).exists()] == []
    # The answers before the held one (5 classifier requests; chunks without a stop-free frame
    # need none), and none after it.
    assert stopped_at >= 5 and stopped_at == journaled_chunks(journal)
    # The server answers the held request too, once let go: its answer went nowhere.
    wait_for(lambda: server_job.requests() == start + stopped_at + 1)

    before = server_job.requests()
    output = finished(snakemake(cluster, tmp_path))
    assert jobs_run(output) == {"predict": 2, "merge": 1, "all": 1}, output[-3000:]
    counts = {
        name: json.loads((results / name / "run.json").read_text())["counts"] for name in SAMPLES
    }
    assert counts[sample]["resumed_chunks"] == stopped_at
    # One chunk per request: the rerun asked for exactly the chunks no journal held.
    asked = sum(c["chunks"] - c["resumed_chunks"] for c in counts.values())
    assert server_job.requests() - before == asked
    assert_as_direct(results, direct, folder)


def test_a_cancelled_server_job_ends_the_sample_jobs_in_one_line_and_leaves_nothing(
    cluster, server_job, hold, samples, direct, folder, tmp_path
):
    project(
        tmp_path, samples, urls_file=str(server_job.address_file),
        extra=("--retry-seconds", "5"),
    )  # fmt: skip
    with hold.holding(after=5):  # one job at a time; the second runs after the first failed
        run = snakemake(cluster, tmp_path, "--jobs", "1", "--keep-going")
        hold.wait_held()
        regions = server_job.regions()
        assert regions
        cluster.scancel(server_job.job)
        hold.release()  # the server's graceful stop waits for the request it holds
        wait_for(lambda: not cluster.queued(server_job.job), 2 * KILL_WAIT + 60)
    # Stopped by its SIGTERM within KillWait, not killed: nothing left on the node.
    assert cluster.accounted(server_job.job).startswith("CANCELLED")
    assert server_job.log.read_text().rstrip().endswith("virnucpro-triton: stopped by SIGTERM")
    assert not server_job.address_file.exists()
    assert processes_mentioning(str(server_job.repository)) == set()
    assert all(port_free(port) for port in server_job.ports.values())
    assert [r for r in regions if (SHM_DIR / r).exists()] == []

    output = finished(run)
    assert run.returncode != 0, output[-3000:]
    for sample in SAMPLES:  # each job's predict ended with one line saying why
        lines = (tmp_path / "results" / "logs" / f"{sample}.log").read_text().splitlines()
        errors = [line for line in lines if line.startswith("virnucpro-triton: error: ")]
        assert len(errors) == 1 and lines[-1] == errors[0], lines[-5:]
        assert str(server_job.address_file) in errors[0] and "Traceback" not in "".join(lines)

    replacement = ServerJob(cluster, server_job.repository, folder)
    assert replacement.address_file == server_job.address_file
    output = finished(snakemake(cluster, tmp_path))
    assert jobs_run(output) == {"predict": 2, "merge": 1, "all": 1}, output[-3000:]
    assert_as_direct(tmp_path / "results", direct, folder)


def test_per_job_embedded_servers_under_slurm_get_a_gpu_each(
    cluster, hold, samples, direct, folder, tmp_path
):
    project(tmp_path, samples, embedded="per_job", repository=str(hold.repository))
    # The Snakefile asks a server's host memory for each job; this node has less.
    output = finished(snakemake(cluster, tmp_path, "--set-resources", "predict:mem_mb=1000"))
    assert jobs_run(output) == {"predict": 2, "merge": 1, "all": 1}, output[-3000:]
    assert_as_direct(tmp_path / "results", direct, folder)
    for job in submitted(output):
        state, tres = cluster.accounted(job, "State,AllocTRES").split("|")
        assert state == "COMPLETED" and "gres/gpu=1" in tres, (state, tres)
    for sample in SAMPLES:
        run = json.loads((tmp_path / "results" / sample / "run.json").read_text())
        assert run["start_seconds"] > 0  # its own server, started by the job


def test_a_shared_embedded_server_is_refused_under_slurm(cluster, samples, tmp_path):
    project(tmp_path, samples, embedded="shared", repository=str(tmp_path))
    process = snakemake(cluster, tmp_path)
    output = finished(process)
    assert process.returncode == 1
    errors = [line for line in output.splitlines() if "virnucpro-triton workflow: error:" in line]
    assert len(errors) == 1 and "cluster jobs cannot reach" in errors[0], output[-3000:]
    assert submitted(output) == []
