"""The served models under abuse: malformed requests, many clients at once, a flood past the
queue limit. Against real tritonserver processes; every request must get an answer of its own
and the model instances must survive."""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from fake_checkpoints import classifier_dim
from google.protobuf import text_format
from reference import same_table
from servers import Hold
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from virnucpro_triton import repository as repo
from virnucpro_triton.commands.predict import predict
from virnucpro_triton.results.outputs import PREDICTIONS, SUMMARY, VERDICTS
from virnucpro_triton.server import EmbeddedServer

MODELS = [repo.PIPELINE, repo.DNABERT_S, repo.ESM2, "classifier_300", "classifier_500"]
ORF = "ATGGCTAGCAAAGGTAAACGTATTGCAGAA"  # stop-free in F1: the pipeline has a frame to classify
Inputs = dict[str, np.ndarray]
Outcome = dict[str, np.ndarray] | InferenceServerException


def text(*strings: str | bytes) -> np.ndarray:
    return np.array(
        [s.encode() if isinstance(s, str) else s for s in strings], dtype=object
    ).reshape(-1, 1)


def sizes(*values: int, dtype: type = np.int32) -> np.ndarray:
    return np.array(values, dtype=dtype).reshape(-1, 1)


def infer_inputs(inputs: Inputs) -> list[grpcclient.InferInput]:
    out = []
    for name, array in inputs.items():
        infer_input = grpcclient.InferInput(
            name, list(array.shape), np_to_triton_dtype(array.dtype)
        )
        infer_input.set_data_from_numpy(array)
        out.append(infer_input)
    return out


def send_all(
    url: str,
    jobs: list[tuple[str, Inputs]],
    timeout: float = 120,
    on_answer: Callable[[Outcome], None] = lambda outcome: None,
) -> list[Outcome]:
    """Send every job at once (async_infer) and return the outputs or error of each;
    `on_answer` sees each as it comes."""
    outcomes: list[Outcome | None] = [None] * len(jobs)
    answered = threading.Semaphore(0)
    client = grpcclient.InferenceServerClient(url)

    def callback(index: int) -> Callable[..., None]:
        def done(result: Any, error: InferenceServerException | None) -> None:
            if error is None:
                names = [o.name for o in result.get_response().outputs]
                outcomes[index] = {n: result.as_numpy(n) for n in names}
            else:
                outcomes[index] = error
            on_answer(outcomes[index])
            answered.release()

        return done

    for index, (model, inputs) in enumerate(jobs):
        client.async_infer(model, infer_inputs(inputs), callback(index), client_timeout=timeout)
    deadline = time.monotonic() + timeout + 10
    for _ in jobs:  # a hang fails here instead of blocking the suite
        assert answered.acquire(timeout=max(0.0, deadline - time.monotonic())), "unanswered"
    client.close()
    return outcomes  # type: ignore[return-value]


def process_tree(pid: int) -> list[int]:
    """The server and its Python backend stubs (its children)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(stat.parent.name))
        except (OSError, ValueError):
            continue  # exited while we looked
    return [pid, *sorted(children)]


def rss_mb(pid: int) -> float:
    """Resident memory of the server and its stubs (psutil is not a dependency)."""
    total_kb = 0
    for p in process_tree(pid):
        status = Path(f"/proc/{p}/status").read_text()
        total_kb += int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1))
    return total_kb / 1024


def server_pid(server: EmbeddedServer) -> int:
    return server._proc.pid  # EmbeddedServer keeps its child private; the pid is what we test


def assert_no_restart(server: EmbeddedServer) -> None:
    log = server.log_text()
    for name in MODELS:
        expected = repo.PIPELINE_INSTANCES if name == repo.PIPELINE else 1
        assert log.count(f"virnucpro-triton: loaded {name} ") == expected, name
    assert not re.search(r"not healthy|restart|Traceback", log, re.I)


def pipeline_counts(url: str) -> tuple[int, int]:
    stats = grpcclient.InferenceServerClient(url).get_inference_statistics(
        repo.PIPELINE, as_json=True
    )["model_stats"][0]["inference_stats"]
    return int(stats["success"].get("count", 0)), int(stats["fail"].get("count", 0))


def good_jobs(dim: int) -> list[tuple[str, Inputs]]:
    features = np.random.default_rng(7).normal(size=(5, dim)).astype(np.float32)
    return [
        (repo.PIPELINE, {"DNA": text(ORF, "AC", ORF * 10), "CHUNK_SIZE": sizes(300, 300, 500)}),
        (repo.DNABERT_S, {"SEQUENCE": text("ACGTNACGTA", "GATTACA" * 40)}),
        (repo.ESM2, {"SEQUENCE": text("MKV", "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTEXB")}),
        ("classifier_300", {"FEATURES": features}),
    ]


def malformed_jobs(dim: int) -> list[tuple[str, Inputs, str]]:
    """(model, inputs, expected message) of each kind of bad request: the first ones reach our
    Python code, the rest are refused by Triton against the config before they get there."""
    too_many = repo.PIPELINE_MAX_BATCH + 1
    rows = repo.EMBEDDER_MAX_BATCH + 1
    features = np.ones((1, dim), np.float32)
    return [
        (repo.PIPELINE, {"DNA": text(b"ACGT\xff"), "CHUNK_SIZE": sizes(300)}, "ASCII text"),
        (repo.PIPELINE, {"DNA": text("ACGT\u00e9"), "CHUNK_SIZE": sizes(300)}, "ASCII text"),
        (repo.PIPELINE, {"DNA": text(ORF, "AC!GT"), "CHUNK_SIZE": sizes(300, 300)}, "DNA row 1"),
        (repo.PIPELINE, {"DNA": text(""), "CHUNK_SIZE": sizes(300)}, "empty chunk"),
        (repo.PIPELINE, {"DNA": text("A" * 301), "CHUNK_SIZE": sizes(300)}, "301 bases"),
        (repo.PIPELINE, {"DNA": text(ORF), "CHUNK_SIZE": sizes(400)}, "no classifier_400"),
        (repo.PIPELINE, {"DNA": text(ORF), "CHUNK_SIZE": sizes(0)}, "no classifier_0"),
        (repo.PIPELINE, {"DNA": text(ORF), "CHUNK_SIZE": sizes(-5)}, "no classifier_-5"),
        (
            repo.PIPELINE,
            {"DNA": text("A" * 10**5), "CHUNK_SIZE": sizes(2**31 - 1)},
            "no classifier",
        ),
        (repo.PIPELINE, {"DNA": text(ORF, ORF), "CHUNK_SIZE": sizes(300)}, "batch size"),
        (repo.PIPELINE, {"DNA": text(ORF), "CHUNK_SIZE": sizes(300, dtype=np.int64)}, "INT64"),
        (repo.PIPELINE, {"DNA": text(ORF, ORF).reshape(1, 2), "CHUNK_SIZE": sizes(300)}, "shape"),
        (
            repo.PIPELINE,
            {"DNA": text(*[ORF] * too_many), "CHUNK_SIZE": sizes(*[300] * too_many)},
            "batch-size must be <=",
        ),
        (repo.PIPELINE, {"DNA": text(ORF)}, "missing required input"),
        (repo.DNABERT_S, {"SEQUENCE": text(b"\xc3\x28ACGT")}, "ASCII text"),
        (repo.DNABERT_S, {"SEQUENCE": text("ACGT", "")}, "row 1: empty sequence"),
        (repo.DNABERT_S, {"SEQUENCE": text("A" * (repo.MAX_DNA_LENGTH + 1))}, "longer than"),
        (repo.DNABERT_S, {"SEQUENCE": text("ACGX")}, "'X' is not a nucleotide code"),
        (repo.DNABERT_S, {"SEQUENCE": np.zeros((1, 1), np.float32)}, "expects 'BYTES'"),
        (repo.DNABERT_S, {"SEQUENCE": text(*["ACGT"] * rows)}, "batch-size must be <="),
        (repo.DNABERT_S, {"SEQUENCE": text()}, "got 0"),
        (repo.ESM2, {"SEQUENCE": text("MK1")}, "'1' is not an amino-acid letter"),
        (repo.ESM2, {"SEQUENCE": text("")}, "empty sequence"),
        (repo.ESM2, {"SEQUENCE": text("M" * (repo.MAX_PROTEIN_LENGTH + 1))}, "longer than"),
        ("classifier_300", {"FEATURES": features * np.nan}, "NaN or infinite"),
        ("classifier_300", {"FEATURES": features * np.inf}, "NaN or infinite"),
        ("classifier_300", {"FEATURES": np.ones((1, dim - 1), np.float32)}, "shape"),
        ("classifier_300", {"FEATURES": features.astype(np.float64)}, "expects 'FP32'"),
        ("classifier_300", {"FEATURES": np.ones((rows, dim), np.float32)}, "batch-size"),
        ("classifier_300", {"FEATURES": np.ones((0, dim), np.float32)}, "byte size mismatch"),
    ]


def assert_same(expected: Outcome, got: Outcome) -> None:
    assert isinstance(expected, dict) and isinstance(got, dict), str(got)
    assert expected.keys() == got.keys()
    for name in expected:  # NaN where the pipeline dropped a frame, in both
        if expected[name].dtype.kind == "f":  # batching with other requests moves last bits
            np.testing.assert_allclose(expected[name], got[name], atol=1e-6, rtol=0)
        else:
            np.testing.assert_array_equal(expected[name], got[name])


def test_malformed_requests_get_errors_of_their_own(server, tiny_repository):
    """1,000 bad requests of every kind, 25 at a time with one good request in their midst:
    each bad one gets INVALID_ARGUMENT and its reason, each good one its usual result, and the
    same server process and model instances serve on."""
    pid, stubs = server_pid(server), process_tree(server_pid(server))
    good = good_jobs(classifier_dim(tiny_repository))
    before = send_all(server.grpc_url, good)
    kinds = malformed_jobs(classifier_dim(tiny_repository))
    bad = [kinds[i % len(kinds)] for i in range(1000)]
    random.Random(0).shuffle(bad)
    for start in range(0, len(bad), 25):
        batch = bad[start : start + 25]
        index = start // 25 % len(good)
        jobs = [(model, inputs) for model, inputs, _ in batch]
        middle = len(jobs) // 2
        jobs.insert(middle, good[index])  # alongside, in the same dynamic batches
        outcomes = send_all(server.grpc_url, jobs)
        assert_same(before[index], outcomes.pop(middle))
        for (model_name, _, message), outcome in zip(batch, outcomes):
            assert isinstance(outcome, InferenceServerException), (model_name, message)
            assert outcome.status() == "StatusCode.INVALID_ARGUMENT", outcome
            assert message in outcome.message(), (message, outcome.message())
    for expected, got in zip(before, send_all(server.grpc_url, good)):
        assert_same(expected, got)
    assert process_tree(pid) == stubs  # neither the server nor a stub was restarted
    assert_no_restart(server)


def test_sixteen_clients_at_once(server, mixed_fasta, tmp_path):
    """16 clients classify the same FASTA at once, each with every chunk size: no request
    fails, every output is byte-identical to a lone client's and the server's memory stays
    flat. A number of runs, not a duration: a faster machine does the same work."""
    # Several requests a run; no retries, so that any failed request fails its run.
    options = dict(batch_chunks=2, max_in_flight=4, progress=False, retry_seconds=0)
    for chunk_size in repo.CHUNK_SIZES:
        predict(
            mixed_fasta, chunk_size, tmp_path / f"alone{chunk_size}", server.grpc_url, **options
        )
    expected = {
        size: {
            n: (tmp_path / f"alone{size}" / n).read_bytes()
            for n in (PREDICTIONS, VERDICTS, SUMMARY)
        }
        for size in repo.CHUNK_SIZES
    }
    pid = server_pid(server)
    rss_before = rss_mb(pid)
    ok_before, failed_before = pipeline_counts(server.grpc_url)
    failures: list[str] = []
    runs = [0] * 16
    each = len(repo.CHUNK_SIZES)  # runs per client: every chunk size once

    def client(k: int) -> None:
        out = tmp_path / f"client{k}"
        while runs[k] < each and not failures:
            size = repo.CHUNK_SIZES[(k + runs[k]) % len(repo.CHUNK_SIZES)]
            try:
                predict(mixed_fasta, size, out, server.grpc_url, **options)
            except Exception as error:  # reported below, with the others
                failures.append(f"client {k}: {error!r}")
                return
            for name, content in expected[size].items():
                if not same_table((out / name).read_bytes(), content):
                    failures.append(f"client {k} run {runs[k]}: {name} differs")
            runs[k] += 1

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    ok_after, failed_after = pipeline_counts(server.grpc_url)
    rss_after = rss_mb(pid)
    print(
        f"16 clients, {elapsed:.0f} s: {sum(runs)} runs, {ok_after - ok_before} requests "
        f"({(ok_after - ok_before) / elapsed:.1f}/s), {failed_after - failed_before} failed; "
        f"server RSS {rss_before:.0f} -> {rss_after:.0f} MB"
    )
    assert not failures, failures[:5]
    assert failed_after == failed_before
    assert runs == [each] * 16
    assert rss_after < rss_before + 300, (rss_before, rss_after)
    assert server_pid(server) == pid
    assert_no_restart(server)


POISON = 12345.0
BUGGY_CLASSIFIER = f"""
from virnucpro_triton.serving.classifier import ClassifierModel


class TritonPythonModel(ClassifierModel):
    # A classifier with a bug: features starting with {POISON} make it raise.
    def initialize(self, args):
        super().initialize(args)
        classify = self.classify

        def buggy(features):
            if features[0, 0] == {POISON}:
                raise RuntimeError("poisoned")
            return classify(features)

        self.classify = buggy
"""


FLOOD_BATCH = 4  # the small-queue pipeline's max batch: full batches that compute in a moment


@pytest.fixture(scope="module")
def small_queue_hold(tiny_repository, tmp_path_factory) -> Hold:
    """The tiny repository with a pipeline queue of 2 (and batches of FLOOD_BATCH), a
    classifier_300 that holds requests on the test's word and a classifier_500 with a bug."""
    hold = Hold(tiny_repository, tmp_path_factory.mktemp("small_queue"))
    config = text_format.Parse(
        (hold.repository / repo.PIPELINE / "config.pbtxt").read_text(),
        model_config_pb2.ModelConfig(),
    )
    config.max_batch_size = FLOOD_BATCH
    config.dynamic_batching.default_queue_policy.max_queue_size = 2
    repo.write_entry(hold.repository, config)
    (hold.repository / "classifier_500" / "1" / repo.MODEL_PY).write_text(BUGGY_CLASSIFIER)
    return hold


@pytest.fixture(scope="module")
def small_queue_server(small_queue_hold):
    repository = small_queue_hold.repository
    with EmbeddedServer(repository, log_path=repository.parent / "tritonserver.log") as running:
        yield running


def test_a_flood_past_the_queue_is_refused_at_once(small_queue_server, small_queue_hold):
    """While the pipeline instances wait on a held classifier, the queue fills: the rest of
    the flood is refused at once, whatever the machine's speed."""
    chunks = [ORF * 3] * FLOOD_BATCH  # a full batch each: none share an execute
    request = {"DNA": text(*chunks), "CHUNK_SIZE": sizes(*[300] * len(chunks))}
    url = small_queue_server.grpc_url
    refusal = threading.Event()

    def on_answer(outcome: Outcome) -> None:
        if isinstance(outcome, InferenceServerException):
            refusal.set()

    with ThreadPoolExecutor(1) as pool, small_queue_hold.holding(after=0):
        # A deadline for hangs only: the requests taken wait for the hold, then the embedders.
        flood = pool.submit(send_all, url, [(repo.PIPELINE, request)] * 40, 600, on_answer)
        small_queue_hold.wait_held()
        assert refusal.wait(timeout=120)  # the rest of the flood found the queue full
        small_queue_hold.release()
        outcomes = flood.result()
    refused = [o for o in outcomes if isinstance(o, InferenceServerException)]
    served = [o for o in outcomes if isinstance(o, dict)]
    assert refused and served
    for error in refused:
        assert error.status() == "StatusCode.UNAVAILABLE", error
        assert "Exceeds maximum queue size" in error.message()
    for outcome in served[1:]:  # the same request gives the same bytes, however busy
        assert_same(served[0], outcome)
    assert isinstance(send_all(url, [(repo.PIPELINE, request)])[0], dict)


def test_an_exception_in_execute_fails_only_its_request(small_queue_server, tiny_repository):
    features = np.random.default_rng(3).normal(size=(4, classifier_dim(tiny_repository)))
    good = {"FEATURES": features.astype(np.float32)}
    poisoned = {"FEATURES": np.full_like(good["FEATURES"], POISON)}
    jobs = [("classifier_500", poisoned if k % 3 == 0 else good) for k in range(30)]
    outcomes = send_all(small_queue_server.grpc_url, jobs)
    expected = send_all(small_queue_server.grpc_url, [("classifier_500", good)])[0]
    for (_, inputs), outcome in zip(jobs, outcomes):
        if inputs is poisoned:
            assert isinstance(outcome, InferenceServerException), outcome
            assert outcome.status() == "StatusCode.INTERNAL"
            assert "internal error: RuntimeError: poisoned" in outcome.message()
        else:
            assert_same(expected, outcome)
    log = small_queue_server.log_text()
    assert "RuntimeError: poisoned" in log  # the traceback, for the operator
    assert log.count("virnucpro-triton: loaded classifier_500 ") == 1
