"""Export from checkpoints in the real on-disk formats, then serve them (real tritonserver)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_checkpoints import (
    write_dnabert_s_dir,
    write_fair_esm_pt,
    write_malicious_pth,
    write_virnucpro_classifier_pth,
)
from google.protobuf import text_format
from tokenizers import Tokenizer
from tritonclient.grpc import model_config_pb2

from virnucpro_triton import repository as repo
from virnucpro_triton.commands.embed import embed, ids_path
from virnucpro_triton.errors import VirnucproError
from virnucpro_triton.export import ExportError, VerificationError, export_repository
from virnucpro_triton.export.checkpoints import load_classifier, load_dnabert_s, load_esm2
from virnucpro_triton.export.formats.torch_format import TorchFormat
from virnucpro_triton.models.dnabert_s import DnabertConfig
from virnucpro_triton.models.esm2 import encode_protein
from virnucpro_triton.server import EmbeddedServer

CLI = [str(Path(sys.executable).parent / "virnucpro-triton")]
DNA_CONFIG = DnabertConfig(
    vocab_size=128, hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96
)
ESM = dict(num_layers=2, embed_dim=40, heads=4)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    write_dnabert_s_dir(root / "DNABERT-S", DNA_CONFIG, fmt="bin")
    write_fair_esm_pt(root / "esm2_t2_tiny.pt", **ESM)
    features = DNA_CONFIG.hidden_size + ESM["embed_dim"]
    for seed, size in enumerate(["300", "500"]):
        write_virnucpro_classifier_pth(root / f"{size}_model.pth", features, seed, hidden_dim=24)
    return {
        "dnabert_s": root / "DNABERT-S",
        "esm2": root / "esm2_t2_tiny.pt",
        "300": root / "300_model.pth",
        "500": root / "500_model.pth",
    }


@pytest.fixture(scope="module")
def exported(checkpoints, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exported") / "repository"
    result = subprocess.run(
        [
            *CLI,
            "export",
            "--out",
            str(out),
            "--dnabert-s",
            str(checkpoints["dnabert_s"]),
            "--esm2",
            str(checkpoints["esm2"]),
            "--classifier-300",
            str(checkpoints["300"]),
            "--classifier-500",
            str(checkpoints["500"]),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    for name in [repo.DNABERT_S, repo.ESM2, "classifier_300", "classifier_500"]:
        assert f"verified {name} (fp32)" in result.stdout
    return out


def test_export_writes_complete_entries(exported):
    for name in [repo.DNABERT_S, repo.ESM2, "classifier_300", "classifier_500", repo.PIPELINE]:
        assert (exported / name / "config.pbtxt").is_file()
        assert (exported / name / "1" / "model.py").is_file()
    assert (exported / repo.DNABERT_S / "1" / repo.TOKENIZER).is_file()
    assert repo.read_architecture(exported / repo.ESM2 / "1")["config"]["embed_dim"] == 40


def test_export_records_each_entrys_checkpoint_and_weights(exported, checkpoints):
    """What `export` read, hashed: a file's sha256, a directory's as `sha256sum *` prints it."""
    listing = "".join(
        f"{repo.sha256_of(f)}  {f.name}\n"
        for f in sorted(checkpoints["dnabert_s"].iterdir())
        if f.is_file()
    )
    expected = {
        repo.DNABERT_S: hashlib.sha256(listing.encode()).hexdigest(),
        repo.ESM2: repo.sha256_of(checkpoints["esm2"]),
        "classifier_300": repo.sha256_of(checkpoints["300"]),
        "classifier_500": repo.sha256_of(checkpoints["500"]),
    }
    sources = {repo.DNABERT_S: "DNABERT-S", repo.ESM2: "esm2_t2_tiny.pt"}
    for name, sha256 in expected.items():
        config = text_format.Parse(
            (exported / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
        )
        about = {k: v.string_value for k, v in config.parameters.items()}
        assert about["source"] == sources.get(name, f"{name[-3:]}_model.pth")
        assert about["source_sha256"] == sha256
        assert about["random_weights"] == "false" and about["dtype"] == "fp32"
        weights = exported / name / "1" / repo.WEIGHTS
        assert json.loads(about["weights_sha256"])[repo.WEIGHTS] == repo.sha256_of(weights)


def test_served_embeddings_equal_the_source_checkpoints(exported, checkpoints, tmp_path):
    dna = ["ATGGCTAGCAAAGGTAAACGTATTGCA" * 12, "acgtn", "GATTACA"]
    proteins = ["MKTAYIAKQRQISFVKSHFSRQLEERLG", "W", "MKV" * 50]
    (tmp_path / "dna.fa").write_text("".join(f">d{i}\n{s}\n" for i, s in enumerate(dna)))
    (tmp_path / "protein.fa").write_text("".join(f">p{i}\n{s}\n" for i, s in enumerate(proteins)))
    with EmbeddedServer(exported) as server:
        embed(tmp_path / "dna.fa", repo.DNABERT_S, tmp_path / "dna.npy", server.grpc_url)
        embed(
            tmp_path / "protein.fa",
            repo.ESM2,
            tmp_path / "protein.npy",
            server.grpc_url,
            batch_size=1,
        )
    dnabert, _, tokenizer_json = load_dnabert_s(checkpoints["dnabert_s"])
    esm2, _ = load_esm2(checkpoints["esm2"])
    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    with torch.inference_mode():
        expected_dna = np.stack(
            [
                dnabert.embed(
                    ids := torch.tensor([tokenizer.encode(s.upper()).ids]),
                    torch.ones_like(ids, dtype=torch.bool),
                )[0].numpy()
                for s in dna
            ]
        )
        expected_protein = np.stack(
            [esm2.embed(torch.tensor([encode_protein(s)]))[0].numpy() for s in proteins]
        )
    np.testing.assert_allclose(np.load(tmp_path / "dna.npy"), expected_dna, atol=1e-5, rtol=0)
    np.testing.assert_allclose(
        np.load(tmp_path / "protein.npy"), expected_protein, atol=1e-5, rtol=0
    )
    assert ids_path(tmp_path / "dna.npy").read_text() == "d0\nd1\nd2\n"


def test_classifier_entry_keeps_the_pickled_module_probabilities(exported, checkpoints):
    served, _ = repo.load_model(exported / "classifier_500" / "1")
    source = load_classifier(checkpoints["500"])
    x = torch.randn(16, 88)
    with torch.inference_mode():
        assert torch.equal(served(x), source(x))


def test_export_refuses_an_entry_out_of_tolerance(checkpoints, tmp_path):
    esm2, _ = load_esm2(checkpoints["esm2"])
    with torch.no_grad():  # fp16 overflows on these weights: the entry cannot match fp32
        esm2.embed_tokens.weight.mul_(1e6)
    with pytest.raises(VerificationError, match=r"refused to write esm2 \(fp16\): max abs diff"):
        TorchFormat("fp16").esm2(tmp_path, esm2, repo.TINY_SOURCE)
    assert not (tmp_path / repo.ESM2).exists()


def test_bf16_export_is_within_cosine_tolerance(checkpoints, tmp_path):
    checks = export_repository(
        tmp_path, esm2=checkpoints["esm2"], dtype="bf16", report=lambda _: None
    )
    assert checks[0].dtype == "bf16" and checks[0].min_cosine >= 0.999


def test_export_refuses_malicious_classifier(tmp_path):
    marker = write_malicious_pth(tmp_path / "300_model.pth")
    result = subprocess.run(
        [
            *CLI,
            "export",
            "--out",
            str(tmp_path / "repo"),
            "--classifier-300",
            str(tmp_path / "300_model.pth"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "300_model.pth" in result.stderr
    assert not marker.exists()
    assert not (tmp_path / "repo" / "classifier_300").exists()


def test_export_refuses_classifier_of_the_wrong_size(checkpoints, tmp_path):
    write_virnucpro_classifier_pth(tmp_path / "3328.pth", input_dim=3328, hidden_dim=8)
    with pytest.raises(VerificationError, match="takes 3328 features"):
        export_repository(
            tmp_path / "repo",
            dnabert_s=checkpoints["dnabert_s"],
            esm2=checkpoints["esm2"],
            classifiers={300: tmp_path / "3328.pth"},
            report=lambda _: None,
        )


def test_fp8_export_needs_bf16_torch_entries(tmp_path):
    result = subprocess.run(
        [*CLI, "export", "--tiny", "--out", str(tmp_path), "--fp8", "feed_forward"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "--fp8 feed_forward needs --dtype bf16 and --format torch" in result.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"format": "onnx", "dtype": "bf16"}, "--format onnx writes fp32 graphs only"),
        ({"fp8": "auto"}, "--fp8 auto needs --dtype bf16 and --format torch"),
        ({"format": "tflite"}, "unknown export format 'tflite'; choose from torch, onnx"),
        ({"tiny": False}, "nothing to export: give --dnabert-s, --esm2, --classifier-300/500"),
    ],
)
def test_export_refuses_what_it_cannot_do_before_writing_anything(tmp_path, settings, message):
    with pytest.raises(ExportError, match=message) as refused:
        export_repository(tmp_path, **{"tiny": True, **settings}, report=lambda _: None)
    assert isinstance(refused.value, VirnucproError)  # the CLI says it in one line
    assert not list(tmp_path.iterdir())
