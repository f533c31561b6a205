"""On a CUDA machine: instances land on the GPU by themselves and give the CPU's numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference import MIXED, in_process, read_rows

from virnucpro_triton import repository as repo
from virnucpro_triton.client.predict import predict
from virnucpro_triton.export import export_repository
from virnucpro_triton.server import EmbeddedServer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
MODELS = [repo.DNABERT_S, repo.ESM2, repo.PIPELINE, "classifier_300", "classifier_500"]


def test_every_model_gets_a_gpu_instance_without_config_edits(server):
    log = server.log_text()
    for name in MODELS:
        lines = [line for line in log.splitlines() if f"virnucpro-triton: loaded {name} " in line]
        assert lines and all("on cuda:0" in line for line in lines), lines


@pytest.mark.parametrize("chunk_size", [300, 500])
def test_gpu_results_equal_cpu_reference(
    server, tiny_repository, mixed_fasta, tmp_path, chunk_size
):
    predict(mixed_fasta, chunk_size, tmp_path, server.grpc_url, progress=False)
    rows = read_rows(tmp_path)
    expected = in_process(tiny_repository, MIXED, chunk_size)
    assert set(rows) == set(expected)
    worst = max(abs(np.array(rows[k][1:]) - expected[k]).max() for k in expected)
    assert worst <= 1e-5


def test_bf16_entries_on_gpu_agree_with_fp32(mixed_fasta, tmp_path):
    fp32, bf16 = tmp_path / "fp32", tmp_path / "bf16"
    export_repository(fp32, tiny=True, report=lambda _: None)
    export_repository(bf16, tiny=True, dtype="bf16", report=lambda _: None)
    for repository in (fp32, bf16):
        with EmbeddedServer(repository) as server:
            predict(mixed_fasta, 500, repository / "out", server.grpc_url, progress=False)
    a, b = read_rows(fp32 / "out"), read_rows(bf16 / "out")
    assert a.keys() == b.keys()
    assert max(abs(a[k][2] - b[k][2]) for k in a) < 0.05
