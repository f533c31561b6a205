"""What the workflow's jobs run: a sample's inputs joined, `virnucpro-triton predict` on it,
and the per-sample results merged."""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import subprocess
from pathlib import Path

from shared_server import URL_VARIABLE

JOURNAL = ".predict-journal"  # predict's journal; kept in the sample's directory when stopped
SUMMARY = "sequence_summary.tsv"
VIRUSES = "virus.fna"
FRAME_FILES = {
    "tsv": "prediction_results.txt",
    "parquet": "prediction_results.parquet",
    "jsonl": "prediction_results.jsonl",
}


class JobError(Exception):
    """A job that failed; the message says why in one line."""


def output_files(predict: dict) -> list[str]:
    """The files `predict` writes in a sample's directory with these settings."""
    names = [
        FRAME_FILES[predict["format"]],
        "prediction_results_highestscore.csv",
        SUMMARY,
        VIRUSES,
        "run.json",
    ]
    return names + ["report.html"] * predict["report"]


def predict_options(predict: dict) -> list[str]:
    """predict's options that decide the results (so a change reruns the samples)."""
    options = [
        "--chunk-size", str(predict["chunk_size"]),
        "--min-length", str(predict["min_length"]),
        "--viral-above", str(predict["viral_above"]),
        "--nonviral-below", str(predict["nonviral_below"]),
        "--min-chunks", str(predict["min_chunks"]),
        "--format", predict["format"],
    ]  # fmt: skip
    return options + ["--report"] * predict["report"] + predict["extra"]


def tuning_options(predict: dict) -> list[str]:
    """predict's options that change how fast, not what (no rerun when they change)."""
    options = ["--batch-chunks", str(predict["batch_chunks"])]
    if predict["max_in_flight"] is not None:
        options += ["--max-in-flight", str(predict["max_in_flight"])]
    return options


def server_options(config: dict) -> list[str]:
    """Where predict gets its answers, and with which token and TLS: the configured servers
    (`urls`, `urls_file`), the run's shared server, or (per_job) an embedded one of its own on
    the repository."""
    servers = [option for url in config["urls"] for option in ("--url", url)]
    if config["urls_file"]:
        servers += ["--urls-file", config["urls_file"]]
    if servers:
        return servers + access_options(config)
    if config["embedded"] == "per_job":
        return ["--repository", config["repository"]]
    url = os.environ.get(URL_VARIABLE)
    if not url:
        raise JobError(
            "no shared server: it is started by the workflow's onstart, in the snakemake "
            "process on this machine (not with --no-hooks, nor on cluster nodes); set `urls` "
            "to running servers or `embedded: per_job` instead"
        )
    return ["--url", url, *access_options(config)]


# predict's option of each access file (access_files' keys)
_ACCESS_OPTIONS = {
    "token_file": "--token-file",
    "tls.ca": "--tls-ca",
    "tls.client_cert": "--tls-client-cert",
    "tls.client_key": "--tls-client-key",
}


def access_files(config: dict) -> dict[str, str]:
    """{config key: path} of the token and TLS files the config names."""
    files = {"token_file": config["token_file"]} if config["token_file"] else {}
    if isinstance(config["tls"], dict):
        files.update({f"tls.{key}": path for key, path in config["tls"].items()})
    return files


def access_options(config: dict) -> list[str]:
    """The token and TLS of the servers in `urls`: the files' paths, never a token, since
    `ps` shows every command line."""
    options = ["--tls"] if config["tls"] is True else []
    for key, path in access_files(config).items():
        options += [_ACCESS_OPTIONS[key], os.path.abspath(path)]
    return options


def _opener(path: str):
    with open(path, "rb") as handle:
        gzipped = handle.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def join_inputs(paths: list[str], joined: str) -> None:
    """The records of several files (plain or gzip) in one plain file, each file's last line
    ended, so that one predict run (and its --resume) reads them all."""
    with open(joined, "wb") as out:
        for path in paths:
            with _opener(path) as handle:
                last = b"\n"
                for block in iter(lambda h=handle: h.read(1 << 20), b""):
                    out.write(block)
                    last = block[-1:]
                if last != b"\n":
                    out.write(b"\n")


def run_predict(
    command: str, fasta: str, out_dir: str, options: list[str], servers: list[str], log: str
) -> None:
    """predict into `out_dir`, its messages in `log`. Always --resume: a journal left by a
    stopped run is gone on from, and without one the run starts afresh."""
    # A path that starts with `-` goes absolute: neither an option (a file named `--help`) nor
    # standard input (a file named `-`; `./-` would be read as `-`).
    fasta = os.path.abspath(fasta) if fasta.startswith("-") else fasta
    argv = [command, "predict", fasta, "-o", out_dir, "--resume", "--no-progress"]
    with open(log, "wb") as handle:
        code = subprocess.run(
            argv + options + servers, stdin=subprocess.DEVNULL, stdout=handle, stderr=handle
        ).returncode
    if code:
        lines = Path(log).read_text(errors="replace").splitlines()
        last = next((line for line in reversed(lines) if line.strip()), "no message")
        journal = Path(out_dir, JOURNAL)
        kept = (
            f"; its journal {journal} is kept and the next run goes on from it (delete it to "
            "start the sample afresh)"
        ) * journal.exists()
        raise JobError(f"predict exited with status {code}: {last} (log: {log}){kept}")


def _create(path: str):
    """A new text file at `path`, never written through what stood there (a symbolic link
    planted to have another file overwritten): that is removed, and O_EXCL | O_NOFOLLOW make
    one put back in between fail."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return os.fdopen(
        os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666), "w"
    )


def merge_summaries(samples: dict[str, str], merged: str) -> None:
    """Every sample's sequence_summary.tsv in one TSV, a `sample` column first."""
    header = None
    partial = f"{merged}.partial"
    with _create(partial) as out:
        for sample, path in samples.items():
            with open(path) as handle:
                first = handle.readline()
                if header is None:
                    header = first
                    out.write(f"sample\t{first}")
                elif first != header:
                    raise JobError(f"{path}: its columns differ from those of the other samples")
                for line in handle:
                    out.write(f"{sample}\t{line}")
    os.replace(partial, merged)


def merge_viruses(samples: dict[str, str], merged: str) -> None:
    """Every sample's virus.fna in one FASTA, `sample=NAME` after each record's id (ids are the
    records' own, so one may repeat across samples; (sample, id) is the key, as in the merged
    summary)."""
    partial = f"{merged}.partial"
    with _create(partial) as out:
        for sample, path in samples.items():
            with open(path) as handle:
                for line in handle:
                    if line.startswith(">"):
                        record, _, rest = line[1:].rstrip("\n").partition(" ")
                        line = f">{record} sample={sample} {rest}".rstrip() + "\n"
                    out.write(line)
    os.replace(partial, merged)


def command_path(command: str) -> str:
    """The CLI as an absolute path, so jobs find the same one whatever their PATH."""
    return os.path.abspath(shutil.which(command) or command)
