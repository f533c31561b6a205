"""The client at cluster scale, against real tritonservers: work spread over several servers
that come and go, runs resumed after the client was killed, and the async library API."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from reference import read_rows, same_table
from servers import Feeder, ensure_running, served, wait_for
from tritonclient.utils import InferenceServerException

from virnucpro_triton.client.classify import Classifier
from virnucpro_triton.client.connection import ClientError
from virnucpro_triton.commands.predict import predict
from virnucpro_triton.fasta import read_fasta
from virnucpro_triton.results import journal as journals
from virnucpro_triton.results.outputs import PREDICTIONS, SUMMARY, VERDICTS, VIRUSES
from virnucpro_triton.results.run_info import RUN_INFO
from virnucpro_triton.server import EmbeddedServer

RESULTS = (PREDICTIONS, VERDICTS, SUMMARY, VIRUSES)
# One request at a time per server: each batch is then computed alone and results are
# byte-identical between runs (see test_server_faults.py).
SETTINGS = dict(batch_chunks=4, progress=False)
CLI = Path(sys.executable).with_name("virnucpro-triton")


@pytest.fixture(scope="module")
def second_server(hold, tmp_path_factory) -> Iterator[EmbeddedServer]:
    log = tmp_path_factory.mktemp("second_server") / "tritonserver.log"
    with EmbeddedServer(hold.repository, log_path=log) as running:
        yield running


@pytest.fixture(scope="module")
def reference(server, contigs, tmp_path_factory) -> Path:
    """The uninterrupted single-server run every other run must reproduce."""
    out = tmp_path_factory.mktemp("reference")
    predict(contigs, 300, out, server.grpc_url, max_in_flight=1, **SETTINGS)
    return out


def test_work_is_spread_over_servers_and_survives_losing_one(
    server, second_server, hold, contigs, reference, tmp_path
):
    before = served(server), served(second_server)
    with ThreadPoolExecutor(1) as pool, hold.holding(after=10):
        urls = [server.grpc_url, second_server.grpc_url]
        run = pool.submit(predict, contigs, 300, tmp_path, urls, max_in_flight=2, **SETTINGS)
        hold.wait_held()
        wait_for(lambda: served(second_server) >= before[1] + 10)
        wait_for(lambda: served(server) > before[0])  # both servers receive work
        second_server.stop(timeout=0)  # killed mid-run: its requests in flight fail
        hold.release()
        summary = run.result(timeout=120)
    for name in RESULTS:
        assert same_table((tmp_path / name).read_bytes(), (reference / name).read_bytes()), name
    # Every chunk exactly once: same frame ids, no repeats.
    lines = (tmp_path / PREDICTIONS).read_text().splitlines()
    assert len(lines) == len(set(lines)) and len(read_rows(tmp_path)) == len(read_rows(reference))
    by_url = {e.url: e for e in summary.endpoints}
    assert by_url[second_server.grpc_url].answered >= 10
    assert by_url[second_server.grpc_url].outages >= 1
    assert by_url[server.grpc_url].answered > 0
    assert summary.retries >= 1  # the request held on the killed server was sent again
    assert not (tmp_path / journals.NAME).exists()  # complete runs leave no journal


def test_a_server_down_at_the_start_is_avoided_until_it_is_up(
    server, second_server, contigs, tmp_path
):
    second_server.stop()  # down (the test before left it killed: no start spent on it)
    before = served(server)

    def second_answered() -> bool:
        try:
            return served(second_server) > 0
        except InferenceServerException:  # not up yet
            return False

    # The input goes on until the second server answered: the run cannot end before.
    fed = Feeder(tmp_path / "contigs.fifo", contigs, until=second_answered)
    with ThreadPoolExecutor(1) as pool:
        urls = [second_server.grpc_url, server.grpc_url]
        out = tmp_path / "out"
        run = pool.submit(predict, fed.path, 300, out, urls, max_in_flight=2, **SETTINGS)
        wait_for(lambda: served(server) >= before + 5)
        second_server.start()  # comes up mid-run: the probes bring it into rotation
        summary = run.result(timeout=300)
    fed.join()
    by_url = {e.url: e for e in summary.endpoints}
    assert by_url[second_server.grpc_url].outages == 1
    assert by_url[second_server.grpc_url].answered > 0
    assert by_url[server.grpc_url].answered + by_url[second_server.grpc_url].answered == -(
        -summary.chunks // 4
    )  # every batch answered once, by one server or the other
    assert summary.records == fed.records == len((out / SUMMARY).read_text().splitlines()) - 1


def test_a_killed_client_resumes_without_losing_or_repeating_a_chunk(
    server, second_server, hold, contigs, reference, tmp_path
):
    out = tmp_path / "out"
    journal = out / journals.NAME
    command = [str(CLI), "predict", str(contigs), "--chunk-size", "300", "-o", str(out)]
    command += ["--url", second_server.grpc_url, "--batch-chunks", "4", "--max-in-flight", "1"]
    ensure_running(second_server)
    with hold.holding(after=20):  # the run's 21st request is held: killed mid-run
        client = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            hold.wait_held()
            wait_for(lambda: journal.exists() and journal.stat().st_size > 0)
        finally:
            client.send_signal(signal.SIGKILL)
            client.wait()
    assert not any((out / name).exists() for name in RESULTS)
    with open(journal, "ab") as handle:  # and the kill tore the block it was writing
        handle.write(b"\x07\x00\x00\x00torn")
    recorded = journals.Journal(journal, journals.fingerprint(contigs, 300), resume=True)
    recorded.close()
    assert recorded.recorded > 0

    summary = predict(contigs, 300, out, server.grpc_url, max_in_flight=1, resume=True, **SETTINGS)
    assert summary.resumed_chunks == recorded.recorded
    (endpoint,) = summary.endpoints
    assert endpoint.answered == -(-(summary.chunks - recorded.recorded) // 4)  # only the rest
    for name in RESULTS:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert sorted(p.name for p in out.iterdir()) == sorted([*RESULTS, RUN_INFO])


def test_resume_refuses_a_journal_of_another_input(server, contigs, tmp_path):
    journal = tmp_path / journals.NAME
    other = tmp_path / "other.fa"
    other.write_text(contigs.read_text().replace("contig_1\n", "contig_one\n"))
    journals.Journal(journal, journals.fingerprint(other, 300), resume=False).close()
    with pytest.raises(ClientError, match=r"another input or settings \(changed: .*size"):
        predict(contigs, 300, tmp_path, server.grpc_url, resume=True, **SETTINGS)
    with pytest.raises(ClientError, match=r"changed: chunk_size"):
        predict(other, 500, tmp_path, server.grpc_url, resume=True, **SETTINGS)


def test_cli_summary_and_urls_file(server, mixed_fasta, tmp_path):
    urls = tmp_path / "servers.txt"
    urls.write_text(f"# the cluster\n{server.grpc_url}  # gpu box\n\n")
    result = subprocess.run(
        [str(CLI), "predict", str(mixed_fasta), "--chunk-size", "300", "-o", str(tmp_path / "o")]
        + ["--urls-file", str(urls), "--max-message-mb", "8"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "frames/s, 0 requests retried" in result.stdout
    assert f"{server.grpc_url}: " in result.stdout and "requests answered" in result.stdout


def test_library_api_yields_one_result_per_sequence_in_input_order(server, mixed_fasta, tmp_path):
    predict(mixed_fasta, 300, tmp_path, server.grpc_url, batch_chunks=2, progress=False)
    expected = read_rows(tmp_path)
    records = [(r.id, r.sequence) for r in read_fasta(mixed_fasta)]

    async def pairs():  # an async source, as a pipeline would feed it
        for pair in records:
            await asyncio.sleep(0)
            yield pair

    async def classify():
        async with Classifier(server.grpc_url, 300, batch_chunks=2) as classifier:
            return [result async for result in classifier.classify(pairs())]

    results = asyncio.run(classify())
    assert [(r.index, r.id, r.length) for r in results] == [
        (i, name, len(sequence)) for i, (name, sequence) in enumerate(records)
    ]
    frames = {c + f: (p_o, p_v) for r in results for c, f, p_o, p_v in r.frames()}
    assert frames.keys() == expected.keys()
    for frame_id, (p_others, p_virus) in frames.items():
        assert np.allclose((p_others, p_virus), expected[frame_id][1:], atol=1e-6)
    empty = results[[r.id for r in results].index("empty")]
    assert empty.kept.shape == (0, 6) and empty.chunk_verdicts() == []
    long = results[0]
    verdicts = long.chunk_verdicts()
    assert len(verdicts) == len(long.chunk_ids) > 1
    for chunk_id, verdict in zip(long.chunk_ids, verdicts):
        rows = [v for k, v in frames.items() if k[:-2] == chunk_id]
        assert verdict == (max(v for _, v in rows) >= max(o for o, _ in rows))


def test_library_api_names_a_bad_sequence(server):
    async def classify():
        async with Classifier([server.grpc_url], 300) as classifier:
            return [r async for r in classifier.classify([("ok", "ACGT"), ("bad", "AC1GT")])]

    with pytest.raises(ClientError, match=r"sequence 1 \('bad'\): '1' is not a nucleotide code"):
        asyncio.run(classify())
