"""Entries served from their spec: the served models read their limits back from the config they
were loaded with, and a third classifier is served end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import text_format
from reference import in_process, read_rows
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from virnucpro_triton import repository as repo
from virnucpro_triton.commands.predict import predict
from virnucpro_triton.export import export_repository
from virnucpro_triton.export.pipeline import export_pipeline
from virnucpro_triton.server import EmbeddedServer

THIRD = 400  # a chunk size beside the two VirNucPro has
# Stop-free in all six frames (GCT.. forward, AGC.. reverse): every chunk has six frames.
STOP_FREE = "GCT" * 334


@pytest.fixture(scope="module")
def third_chunk_size(tmp_path_factory):
    """A tiny repository with classifiers for 300, 400 and 500 bp, whose dnabert_s takes 4 rows
    a request and whose esm2 takes proteins of 150 residues at most (set in their configs)."""
    repository = tmp_path_factory.mktemp("third") / "repository"
    export_repository(repository, tiny=True, chunk_sizes=(300, THIRD, 500), report=lambda _: None)
    for name, change in [
        (repo.DNABERT_S, lambda c: setattr(c, "max_batch_size", 4)),
        (repo.ESM2, lambda c: c.parameters[repo.MAX_LENGTH].__setattr__("string_value", "150")),
    ]:
        path = repository / name / "config.pbtxt"
        config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        change(config)
        path.write_text(text_format.MessageToString(config))
    export_pipeline(repository)  # as export does: told the entries' limits as they are now
    log = repository.parent / "tritonserver.log"
    with EmbeddedServer(repository, log_path=log) as running:
        yield repository, running


def inference_count(client, name: str) -> int:
    stats = client.get_inference_statistics(name, as_json=True)["model_stats"][0]
    return int(stats["inference_stats"]["success"].get("count", 0))


def test_a_third_chunk_size_is_served_through_the_pipeline(third_chunk_size, tmp_path):
    repository, server = third_chunk_size
    fasta_text = f">stop_free three 400-bp chunks\n{STOP_FREE}\n"
    fasta = tmp_path / "in.fa"
    fasta.write_text(fasta_text)
    # 18 frames in one pipeline request: the pipeline splits them to dnabert_s's 4 rows.
    predict(fasta, THIRD, tmp_path / "out", server.grpc_url, progress=False)
    rows = read_rows(tmp_path / "out")
    expected = in_process(repository, fasta_text, THIRD)
    chunks = math.ceil(len(STOP_FREE) / THIRD)
    assert sorted(rows) == sorted(expected) and len(rows) == 6 * chunks
    for frame_id, (_, p_others, p_virus) in rows.items():
        assert np.allclose([p_others, p_virus], expected[frame_id], atol=1e-5), frame_id
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        assert inference_count(client, "classifier_400") > 0
        assert (
            inference_count(client, "classifier_300")
            == inference_count(client, "classifier_500")
            == 0
        )
        assert inference_count(client, repo.DNABERT_S) >= math.ceil(6 * chunks / 4)


def test_served_limits_are_those_of_the_loaded_config(third_chunk_size):
    _, server = third_chunk_size
    with grpcclient.InferenceServerClient(server.grpc_url) as client:

        def embed(name: str, sequences: list[str]):
            sequence = grpcclient.InferInput(repo.SEQUENCE.name, [len(sequences), 1], "BYTES")
            sequence.set_data_from_numpy(np.array(sequences, dtype=object).reshape(-1, 1))
            return client.infer(name, [sequence])

        embed(repo.ESM2, ["M" * 150])
        with pytest.raises(InferenceServerException, match="longer than 150"):
            embed(repo.ESM2, ["M" * 151])
        with pytest.raises(InferenceServerException, match="batch-size must be <= 4"):
            embed(repo.DNABERT_S, ["ACGT"] * 5)
        dna = grpcclient.InferInput(repo.DNA_CHUNKS.name, [1, 1], "BYTES")
        dna.set_data_from_numpy(np.array([STOP_FREE[:THIRD]], dtype=object).reshape(1, 1))
        size = grpcclient.InferInput(repo.CHUNK_SIZE.name, [1, 1], "INT32")
        size.set_data_from_numpy(np.array([[450]], np.int32))
        with pytest.raises(InferenceServerException, match="chunk sizes are 300, 400, 500"):
            client.infer(repo.PIPELINE, [dna, size])
