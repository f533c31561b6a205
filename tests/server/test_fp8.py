"""FP8 for ESM-2's linear layers: chosen and verified at export on the weights (the rule: cosine
>= 0.999 to bf16 and 99.5% of verdicts on the shipped probe frames), refused with its numbers
when a named set misses it, off unless verified. On this CPU the arithmetic is emulated."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from virnucpro_triton import repository as repo
from virnucpro_triton.backends.factory import embedding_backend
from virnucpro_triton.backends.torch_backend import TorchBackend, apply_fp8, fp8_layers
from virnucpro_triton.commands.embed import embed
from virnucpro_triton.export import export_repository
from virnucpro_triton.export.formats.torch_format import TorchFormat
from virnucpro_triton.export.fp8_choice import Fp8Refused, probe_frames
from virnucpro_triton.export.tiny import TINY_ESM2, tiny_models
from virnucpro_triton.models.esm2 import Esm2
from virnucpro_triton.models.fp8 import Fp8Linear, linear_layers, to_fp8
from virnucpro_triton.results import run_info
from virnucpro_triton.server import EmbeddedServer

CLI = [str(Path(sys.executable).parent / "virnucpro-triton")]
CPU = torch.device("cpu")
BLOCK_0 = fp8_layers(repo.FP8_ALL, Esm2(TINY_ESM2))[:6]


@pytest.fixture(scope="module")
def verdict_repository(tmp_path_factory) -> Path:
    """DNABERT-S and the classifiers (bf16 tiny), which FP8's verdict check runs through."""
    repository = tmp_path_factory.mktemp("repository")
    export_repository(repository, tiny=True, dtype="bf16", report=lambda _: None)
    shutil.rmtree(repository / repo.ESM2)
    return repository


@pytest.fixture(scope="module")
def auto_export(verdict_repository, tmp_path_factory):
    """quiet_block_0() exported with --fp8 auto beside them: (its check, the repository)."""
    esm2 = quiet_block_0(tmp_path_factory.mktemp("tokenizer"))
    check = TorchFormat("bf16", repo.FP8_AUTO).esm2(verdict_repository, esm2, repo.TINY_SOURCE)
    return check, verdict_repository


def quiet_block_0(tmp_path: Path) -> Esm2:
    """The tiny ESM-2 with block 0's attention and feed-forward outputs scaled by 1e-3: its six
    layers barely reach the embedding, so FP8 there is harmless, while elsewhere it is not."""
    esm2 = tiny_models(tmp_path)[2]
    with torch.no_grad():
        esm2.layers[0].self_attn.out_proj.weight.mul_(1e-3)
        esm2.layers[0].fc2.weight.mul_(1e-3)
    return esm2


def config_of(entry: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse((entry / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def numbers(verified: str) -> list[tuple[int, float, float]]:
    """(layers, min cosine, agreement) of each check described in `verified`."""
    pattern = r"FP8 on (\d+) of 12 linear layers: min cosine ([\d.]+) .*?agree on ([\d.]+)%"
    return [(int(n), float(c), float(a) / 100) for n, c, a in re.findall(pattern, verified)]


def test_the_probe_holds_realistic_frames_of_both_classes_at_each_chunk_size():
    for size in repo.CHUNK_SIZES:
        frames = probe_frames(size)
        assert len(frames) > 700
        assert all(f.protein and "*" not in f.protein for f in frames)
        lengths = [len(f.protein) for f in frames]
        assert max(lengths) == size // 3 and min(lengths) >= size // 3 - 1


def test_emulated_fp8_is_the_e4m3_rounding_of_both_operands():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32).bfloat16()
    x = torch.randn(5, 64).bfloat16()
    got = Fp8Linear(linear, emulate=True)(x).float()
    exact = linear(x).float()
    error = ((got - exact).norm() / exact.norm()).item()
    assert 1e-3 < error < 0.08  # e4m3 keeps 3 mantissa bits: a few % off, not bf16's 0.4%
    # Values already on the e4m3 grid of their row scale come through exactly.
    linear = torch.nn.Linear(2, 2).bfloat16()
    linear.weight.data = torch.tensor([[448.0, 2.0], [1.0, -0.5]]).bfloat16()
    x = torch.tensor([[448.0, 1.0]]).bfloat16()
    assert torch.equal(Fp8Linear(linear, emulate=True)(x), linear(x))


def test_auto_keeps_the_layers_that_pass_the_rule_and_no_more(auto_export):
    check, repository = auto_export
    config = config_of(repository / repo.ESM2)
    chosen = config.parameters["fp8"].string_value.split(",")
    verified = config.parameters[repo.FP8_VERIFIED].string_value
    assert set(BLOCK_0) <= set(chosen) and len(chosen) < 12, chosen
    (kept, cosine, agreement), (missed, *missed_numbers) = numbers(verified)
    assert kept == len(chosen) and missed == kept + 1
    assert cosine >= 0.999 and agreement >= 0.995
    assert missed_numbers[0] < 0.999 or missed_numbers[1] < 0.995
    assert "probe frames, emulated" in verified and verified in check.note
    assert f"fp8 on {len(chosen)} of 12 linear layers not applied: cpu" in check.note


def test_a_named_set_that_misses_the_rule_is_refused_with_its_numbers(tmp_path):
    result = subprocess.run(
        [*CLI, "export", "--tiny", "--dtype", "bf16", "--fp8", "feed_forward"]
        + ["--out", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    refusal = "refused to write esm2 with fp8 feed_forward: FP8 on 4 of 12 linear layers"
    assert refusal in result.stderr and "probe frames, emulated" in result.stderr
    ((layers, cosine, agreement),) = numbers(result.stderr)
    assert cosine < 0.999 or agreement < 0.995
    assert "--fp8 auto" in result.stderr
    assert not (tmp_path / repo.ESM2).exists()  # nothing unverified was written


def test_fp8_needs_the_models_its_verdicts_run_through(tmp_path):
    with pytest.raises(Fp8Refused, match="need the dnabert_s entry and a classifier"):
        TorchFormat("bf16", "auto").esm2(tmp_path, quiet_block_0(tmp_path), repo.TINY_SOURCE)
    assert not (tmp_path / repo.ESM2).exists()


def test_fp8_settings_name_layers_or_are_refused():
    model = Esm2(TINY_ESM2).to(torch.bfloat16)
    assert fp8_layers(repo.FP8_NONE, model) == []
    assert fp8_layers(repo.FP8_FEED_FORWARD, model) == [
        "layers.0.fc1",
        "layers.0.fc2",
        "layers.1.fc1",
        "layers.1.fc2",
    ]
    assert fp8_layers(repo.FP8_ALL, model) == linear_layers(model)
    assert fp8_layers("layers.1.self_attn.v_proj", model) == ["layers.1.self_attn.v_proj"]
    with pytest.raises(ValueError, match="'layers.0.fc3' is not a linear layer"):
        apply_fp8(model, "layers.0.fc1,layers.0.fc3", CPU)
    assert apply_fp8(model, "none", CPU) == ""
    assert apply_fp8(model, "layers.0.fc1", CPU) == (
        "fp8 on 1 of 12 linear layers not applied: cpu is not a CUDA GPU"
    )
    originals = to_fp8(model, ["layers.1.fc2"])
    assert isinstance(model.layers[1].fc2, Fp8Linear) and list(originals) == ["layers.1.fc2"]


def test_a_verified_fp8_entry_is_served_as_bf16_where_no_gpu_has_fp8(auto_export, tmp_path):
    """The same weights exported with and without FP8: on this CPU both serve bf16, the FP8
    entry's log says so, and the embeddings are the same bytes."""
    plain, fp8 = tmp_path / "plain", auto_export[1]
    TorchFormat("bf16").esm2(plain, quiet_block_0(tmp_path), repo.TINY_SOURCE)
    assert config_of(plain / repo.ESM2).parameters["fp8"].string_value == repo.FP8_NONE
    proteins = tmp_path / "proteins.fa"
    proteins.write_text(">p0\nMKTAYIAKQRQISFVKSHFSRQLEERLG\n>p1\nW\n>p2\n" + "MKV" * 50 + "\n")
    outputs = {}
    for name, repository in (("plain", plain), ("fp8", fp8)):
        served = tmp_path / f"{name}-esm2"
        shutil.copytree(repository / repo.ESM2, served / repo.ESM2)
        log = tmp_path / f"{name}.log"
        with EmbeddedServer(served, log_path=log) as server:
            embed(proteins, repo.ESM2, tmp_path / f"{name}.npy", server.grpc_url)
        loaded = [line for line in log.read_text().splitlines() if "loaded esm2 " in line]
        assert loaded and all(("not applied" in line) == (name == "fp8") for line in loaded)
        outputs[name] = np.load(tmp_path / f"{name}.npy")
    assert outputs["plain"].tobytes() == outputs["fp8"].tobytes()


def test_a_run_names_the_fp8_it_was_served_with_in_a_few_words():
    about = {"source": "esm2_t36_3B_UR50D.pt", "dtype": "bf16"}
    assert run_info.describe({**about, "fp8": "none"}) == "esm2_t36_3B_UR50D.pt, bf16"
    assert run_info.describe({**about, "fp8": "feed_forward"}).endswith(", fp8 feed_forward")
    chosen = {**about, "fp8": "layers.0.fc1,layers.3.fc2,layers.4.self_attn.q_proj"}
    assert run_info.describe(chosen).endswith(", bf16, fp8 on 3 linear layers")


def test_fp8_is_refused_in_one_line_over_onnx_entries(verdict_repository, tmp_path):
    repository = tmp_path / "repository"  # without the esm2 entry auto_export may have added
    shutil.copytree(verdict_repository, repository, ignore=shutil.ignore_patterns(repo.ESM2))
    architecture = repository / repo.classifier_name(300) / "1" / repo.ARCHITECTURE
    architecture.write_text(architecture.read_text().replace('"torch"', '"onnx"'))
    assert repo.read_architecture(architecture.parent)["runtime"] == repo.ONNX
    with pytest.raises(Fp8Refused, match="verified through the torch models: .*ONNX entry"):
        TorchFormat("bf16", "auto").esm2(repository, quiet_block_0(tmp_path), repo.TINY_SOURCE)
    assert not (repository / repo.ESM2).exists()


def test_the_backend_factory_takes_fp8_for_a_torch_esm2_entry_only(verdict_repository):
    dna = verdict_repository / repo.DNABERT_S / "1"
    with pytest.raises(ValueError, match="needs a torch-format esm2 entry, not dnabert_s torch"):
        embedding_backend(dna, CPU, 32, fp8=repo.FP8_FEED_FORWARD)
    backend = embedding_backend(dna, CPU, 32, compiled_on_gpu=True)
    assert isinstance(backend, TorchBackend)
    assert (backend.dim, backend.fp8, backend.compiled, backend.packed) == (32, "", False, False)
