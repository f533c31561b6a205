"""`python -m benchmarks.door`: what access tokens and TLS cost at the front door.

Serves the tiny repository twice at once, open and with an access token and TLS, and sends each
the same requests in rounds that alternate between them: the pipeline's requests over gRPC as
`predict` sends them (64 chunks of 300 bp each, 4 in flight, one connection per client kept
open), and model metadata over gRPC and HTTP (the door's own work dominates those). Reports per
workload and server the door's CPU milliseconds per request and the requests per second, medians
over the rounds (and their range). The certificates are tests/certificates.py's (openssl).
The measurement docs/performance.md quotes is kept in docs/measurements/.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import ssl
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import click
import numpy as np
import tritonclient.grpc as grpcclient

from tests.certificates import make_certificates
from tests.inputs import STOP_FREE_CODONS
from virnucpro_triton import repository as repo
from virnucpro_triton.credentials import bearer
from virnucpro_triton.door.settings import AccessSettings
from virnucpro_triton.export import export_repository
from virnucpro_triton.server import EmbeddedServer


def _door_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


class _Target:
    """A server and how a client reaches it (TLS and the token, or neither)."""

    def __init__(self, server: EmbeddedServer, certs: Path | None, token: str | None) -> None:
        self.server, self.certs = server, certs
        self.headers = {"authorization": bearer(token)} if token else None

    def grpc(self) -> grpcclient.InferenceServerClient:
        if self.certs is None:
            return grpcclient.InferenceServerClient(self.server.grpc_url)
        return grpcclient.InferenceServerClient(
            self.server.grpc_url, ssl=True, root_certificates=str(self.certs / "ca.pem")
        )

    def http(self) -> http.client.HTTPConnection:
        host, port = self.server.http_url.rsplit(":", 1)
        if self.certs is None:
            return http.client.HTTPConnection(host, int(port), timeout=60)
        context = ssl.create_default_context(cafile=self.certs / "ca.pem")
        return http.client.HTTPSConnection(host, int(port), timeout=60, context=context)


def _pipeline_inputs(chunks: int, rng: random.Random) -> list[grpcclient.InferInput]:
    dna = np.array(
        [["".join(rng.choices(STOP_FREE_CODONS, k=100)).encode()] for _ in range(chunks)]
    )
    element = grpcclient.InferInput(repo.DNA_CHUNKS.name, [chunks, 1], "BYTES")
    element.set_data_from_numpy(dna.astype(np.object_))
    size = grpcclient.InferInput(repo.CHUNK_SIZE.name, [chunks, 1], "INT32")
    size.set_data_from_numpy(np.full((chunks, 1), 300, dtype=np.int32))
    return [element, size]


def _grpc_infer(target: _Target, n: int) -> None:
    inputs = _pipeline_inputs(64, random.Random(n))
    with target.grpc() as client:
        for _ in range(n):
            client.infer(repo.PIPELINE, inputs, headers=target.headers)


def _grpc_metadata(target: _Target, n: int) -> None:
    with target.grpc() as client:
        for _ in range(n):
            client.get_model_metadata(repo.PIPELINE, headers=target.headers)


def _http_metadata(target: _Target, n: int) -> None:
    connection = target.http()
    headers = {"Authorization": target.headers["authorization"]} if target.headers else {}
    try:
        for _ in range(n):
            connection.request("GET", f"/v2/models/{repo.PIPELINE}", headers=headers)
            answer = connection.getresponse()
            answer.read()
            assert answer.status == 200, answer.status
    finally:
        connection.close()


WORKLOADS: dict[str, tuple[Callable[[_Target, int], None], int]] = {
    "grpc_infer_64_chunks": (_grpc_infer, 40),  # requests per client (4 clients)
    "grpc_model_metadata": (_grpc_metadata, 400),
    "http_model_metadata": (_http_metadata, 400),
}
_CLIENTS = 4


def _round(target: _Target, work: Callable[[_Target, int], None], n: int) -> dict[str, float]:
    errors: list[BaseException] = []

    def client() -> None:
        try:
            work(target, n)
        except BaseException as e:  # noqa: BLE001 - raised below
            errors.append(e)

    threads = [threading.Thread(target=client) for _ in range(_CLIENTS)]
    cpu, start = _door_cpu_seconds(target.server.pid), time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    cpu = _door_cpu_seconds(target.server.pid) - cpu
    if errors:
        raise errors[0]
    requests = n * _CLIENTS
    return {"requests_per_s": requests / seconds, "door_cpu_ms_per_request": 1000 * cpu / requests}


def _summary(runs: list[dict[str, float]]) -> dict[str, object]:
    """Each measure's median and, for how far rounds spread on a shared machine, its range."""
    found: dict[str, object] = {}
    for k in runs[0]:
        values = [run[k] for run in runs]
        found[k] = round(statistics.median(values), 3)
        found[f"{k}_range"] = [round(min(values), 3), round(max(values), 3)]
    return found


@click.command()
@click.option("--rounds", type=int, default=5, show_default=True)
@click.option("--json-out", type=click.Path(path_type=Path), default=Path("build/bench_door.json"))
def main(rounds: int, json_out: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-door-") as tmp:
        work = Path(tmp)
        repository = work / "repository"
        export_repository(repository, tiny=True, report=lambda _: None)
        make_certificates(work, {})
        token = os.urandom(32).hex()
        (work / "tokens").write_text(token + "\n")
        secured = AccessSettings(
            token_file=work / "tokens", tls_cert=work / "server.pem", tls_key=work / "server.key"
        )
        with (
            EmbeddedServer(repository, log_path=work / "open.log") as plain,
            EmbeddedServer(repository, access=secured, log_path=work / "secured.log") as tls,
        ):
            targets = {"open": _Target(plain, None, None), "token_tls": _Target(tls, work, token)}
            samples: dict[str, dict[str, list[dict[str, float]]]] = {}
            for name, (function, n) in WORKLOADS.items():
                for target in targets.values():  # warm-up: connections, first calls
                    _round(target, function, max(1, n // 10))
                for _ in range(rounds):
                    for mode, target in targets.items():
                        sample = _round(target, function, n)
                        samples.setdefault(name, {}).setdefault(mode, []).append(sample)
    results: dict[str, dict] = {"cpu_cores": os.cpu_count(), "rounds": rounds, "clients": _CLIENTS}
    for name, modes in samples.items():
        results[name] = {mode: _summary(runs) for mode, runs in modes.items()}
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(results, indent=2) + "\n")
    click.echo(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
