"""The served pipeline end to end against a real tritonserver (no mocks)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from inputs import STOP_FREE_CODONS
from reference import MIXED, in_process, read_rows
from tritonclient.utils import InferenceServerException

from virnucpro_triton import repository as repo
from virnucpro_triton.commands.predict import predict
from virnucpro_triton.results.outputs import PREDICTIONS, SUMMARY, VERDICTS
from virnucpro_triton.sequence import six_frames

CLI = [str(Path(sys.executable).parent / "virnucpro-triton")]


@pytest.mark.parametrize("chunk_size", [300, 500])
def test_served_results_equal_in_process_computation(
    server, tiny_repository, mixed_fasta, tmp_path, chunk_size
):
    summary = predict(mixed_fasta, chunk_size, tmp_path, server.grpc_url, progress=False)
    rows = read_rows(tmp_path)
    expected = in_process(tiny_repository, MIXED, chunk_size)
    assert set(rows) == set(expected) and len(rows) == summary.frames > 0
    worst = max(abs(np.array(rows[k][1:]) - expected[k]).max() for k in expected)
    assert worst <= 1e-5
    for frame_id, (label, p_others, p_virus) in rows.items():
        assert label == ("virus" if p_virus > p_others else "others"), frame_id


def test_outputs_account_for_every_record(server, mixed_fasta, tmp_path):
    predict(mixed_fasta, 500, tmp_path, server.grpc_url, progress=False)
    with open(tmp_path / SUMMARY) as handle:
        summary = list(csv.DictReader(handle, delimiter="\t"))
    assert [r["id"] for r in summary] == ["long_contig", "tiny", "lower", "with_N", "empty", "orfs"]
    by_id = {r["id"]: r for r in summary}
    assert by_id["long_contig"]["length"] == str(27 * 45)
    assert by_id["long_contig"]["chunks"] == "3"
    assert by_id["tiny"]["chunks"] == "1" and by_id["tiny"]["chunks_without_frame"] == "1"
    assert by_id["tiny"]["max_p_virus"] == "NA"
    assert by_id["empty"]["chunks"] == "0" and by_id["empty"]["length"] == "0"
    rows = read_rows(tmp_path)
    verdicts = (tmp_path / VERDICTS).read_text().splitlines()
    assert verdicts[0] == "Modified_ID\tIs_Virus"
    chunk_ids = [line.split("\t")[0] for line in verdicts[1:]]
    assert chunk_ids == sorted({k[:-2] for k in rows})
    virus_chunks = sum(line.endswith("True") for line in verdicts[1:])
    assert virus_chunks == sum(int(r["chunks_virus"]) for r in summary)
    for r in summary:
        frames = [v for k, v in rows.items() if k.startswith(r["id"] + "_chunk_")]
        if frames:
            assert float(r["max_p_virus"]) == pytest.approx(max(v[2] for v in frames), abs=1e-7)


def test_results_do_not_depend_on_batching(server, mixed_fasta, tmp_path):
    predict(
        mixed_fasta,
        300,
        tmp_path / "one",
        server.grpc_url,
        batch_chunks=1,
        max_in_flight=8,
        progress=False,
    )
    predict(mixed_fasta, 300, tmp_path / "many", server.grpc_url, batch_chunks=64, progress=False)
    # What holds (README, "What is identical between runs"): the same rows; probabilities within
    # 1e-6, not always to the last digit; so a label flips only where its two are that close.
    one, many = read_rows(tmp_path / "one"), read_rows(tmp_path / "many")
    assert one.keys() == many.keys()
    differences = [abs(np.array(one[k][1:]) - np.array(many[k][1:])).max() for k in one]
    flipped = [k for k in one if one[k][0] != many[k][0]]
    print(f"{np.count_nonzero(differences)} of {len(one)} rows differ, at most {max(differences)}")
    assert max(differences) <= 1e-6
    assert all(abs(one[k][1] - one[k][2]) <= 2e-6 for k in flipped), flipped


def test_models_load_once_across_client_runs(server, mixed_fasta, tmp_path):
    outputs = []
    for run in range(3):
        result = subprocess.run(
            [
                *CLI,
                "predict",
                str(mixed_fasta),
                "--chunk-size",
                "500",
                "-o",
                str(tmp_path / f"run{run}"),
                "--url",
                server.grpc_url,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        outputs.append(result)
    for name in [repo.DNABERT_S, repo.ESM2, repo.PIPELINE, "classifier_300", "classifier_500"]:
        expected = repo.PIPELINE_INSTANCES if name == repo.PIPELINE else 1
        assert server.log_text().count(f"virnucpro-triton: loaded {name} ") == expected, name
    stats = grpcclient.InferenceServerClient(server.grpc_url).get_inference_statistics(
        repo.PIPELINE, as_json=True
    )
    assert int(stats["model_stats"][0]["inference_stats"]["success"]["count"]) >= 3
    for name in [PREDICTIONS, VERDICTS, SUMMARY]:
        assert (tmp_path / "run2" / name).read_bytes() == (tmp_path / "run0" / name).read_bytes()


def test_any_kserve_v2_http_client_can_call_the_pipeline(server):
    body = {
        "inputs": [
            {
                "name": "DNA",
                "shape": [2, 1],
                "datatype": "BYTES",
                "data": ["ATGGCTAGCAAAGGTAAACGTATTGCAGAA", "AC"],
            },
            {"name": "CHUNK_SIZE", "shape": [2, 1], "datatype": "INT32", "data": [300, 300]},
        ]
    }
    request = urllib.request.Request(
        f"http://{server.http_url}/v2/models/{repo.PIPELINE}/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        outputs = {o["name"]: o for o in json.load(response)["outputs"]}
    assert outputs["PROBABILITIES"]["shape"] == [2, 6, 2]
    kept = np.array(outputs["FRAME_KEPT"]["data"], dtype=bool).reshape(2, 6)
    expected = [
        [f is not None for f in six_frames(s)] for s in ["ATGGCTAGCAAAGGTAAACGTATTGCAGAA", "AC"]
    ]
    assert kept.tolist() == expected
    probabilities = np.array(outputs["PROBABILITIES"]["data"], dtype=float).reshape(2, 6, 2)
    assert np.allclose(probabilities[kept].sum(-1), 1.0, atol=1e-5)
    assert np.isnan(probabilities[~kept]).all()


def test_bad_request_fails_alone_and_the_model_keeps_serving(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)

    def infer(dna: list[str], size: int = 300):
        inputs = [
            grpcclient.InferInput("DNA", [len(dna), 1], "BYTES"),
            grpcclient.InferInput("CHUNK_SIZE", [len(dna), 1], "INT32"),
        ]
        inputs[0].set_data_from_numpy(np.array(dna, dtype=object).reshape(-1, 1))
        inputs[1].set_data_from_numpy(np.full((len(dna), 1), size, np.int32))
        return client.infer(repo.PIPELINE, inputs)

    good = infer(["ATGGCTAGCAAAGGTAAACGTATTGCAGAA"]).as_numpy("PROBABILITIES")
    with pytest.raises(InferenceServerException, match="DNA row 1: '!' is not a nucleotide code"):
        infer(["ACGT", "AC!GT"])
    with pytest.raises(InferenceServerException, match="chunk of 301 bases for chunk size 300"):
        infer(["A" * 301])
    with pytest.raises(InferenceServerException, match="classifier_400"):
        infer(["ATGGCTAGCAAAGGTAAACGTATTGCAGAA"], size=400)
    again = infer(["ATGGCTAGCAAAGGTAAACGTATTGCAGAA"]).as_numpy("PROBABILITIES")
    np.testing.assert_array_equal(good, again)


def test_embed_cli_writes_rows_in_input_order_with_ids(server, tmp_path):
    fasta = tmp_path / "proteins.fa"
    fasta.write_text(">p1 first\nMKV\n>p2\nMKTAYIAKQRQ\n>p1\nW\n")
    result = subprocess.run(
        [
            *CLI,
            "embed",
            str(fasta),
            "--model",
            "esm2",
            "-o",
            str(tmp_path / "e.npy"),
            "--url",
            server.grpc_url,
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    vectors = np.load(tmp_path / "e.npy")
    assert vectors.shape == (3, 32) and vectors.dtype == np.float32
    assert (tmp_path / "e.ids.txt").read_text() == "p1\np2\np1#2\n"
    assert not np.allclose(vectors[0], vectors[1])


def test_a_request_of_the_most_chunks_allowed_is_one_request(server, tmp_path):
    """`--batch-chunks` up to MAX_BATCH_CHUNKS: the pipeline takes that many chunks in one
    request, and answers each as it answers them in small requests."""
    rng = np.random.default_rng(5)
    fasta = tmp_path / "many.fa"
    with open(fasta, "w") as handle:
        for i in range(repo.MAX_BATCH_CHUNKS):
            # One chunk per record; most have a stop in every frame (cheap), every 64th has
            # stop-free frames, so the request carries embedding work too.
            real = i % 64 == 0
            sequence = "".join(rng.choice(STOP_FREE_CODONS, 100)) if real else "AACT" * 75
            handle.write(f">r{i}\n{sequence}\n")
    small = tmp_path / "small"
    predict(fasta, 300, small, server.grpc_url, batch_chunks=64, progress=False)
    with grpcclient.InferenceServerClient(server.grpc_url) as client:

        def requests_and_chunks() -> np.ndarray:
            stats = client.get_inference_statistics(repo.PIPELINE, as_json=True)["model_stats"][0]
            requests = stats["inference_stats"]["success"].get("count", 0)
            return np.array([int(requests), int(stats.get("inference_count", 0))])

        before = requests_and_chunks()
        big = tmp_path / "big"
        predict(
            fasta, 300, big, server.grpc_url, batch_chunks=repo.MAX_BATCH_CHUNKS, progress=False
        )
        assert (requests_and_chunks() - before).tolist() == [1, repo.MAX_BATCH_CHUNKS]
    small_rows, big_rows = read_rows(small), read_rows(big)
    # Rows are frames: every stop-free record has its first frame, none of the others any.
    records = {key.split("_chunk_")[0] for key in small_rows}
    assert records == {f"r{i}" for i in range(0, repo.MAX_BATCH_CHUNKS, 64)}
    assert small_rows.keys() == big_rows.keys()
    for key, (label, *scores) in small_rows.items():
        assert big_rows[key][0] == label and np.allclose(big_rows[key][1:], scores, atol=1e-6)
