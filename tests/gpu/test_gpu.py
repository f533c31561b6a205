"""On a CUDA machine: instances land on the GPU by themselves and give the CPU's numbers."""

from __future__ import annotations

import copy
import random
from pathlib import Path

import pytest
import torch
from inputs import STOP_FREE_CODONS, reads
from invariance import (
    CHUNK_SIZE,
    INVARIANT_ENTRIES,
    assert_same_results,
    beside_another_client,
    differing_from_whole,
    embedded_in_batchings,
    export_invariant,
    random_sequences,
    served_embedder,
    write_records,
)
from reference import MIXED, read_rows, worst_difference

from virnucpro_triton import repository as repo
from virnucpro_triton.backends.torch_backend import TorchBackend, fp8_layers
from virnucpro_triton.commands.predict import predict
from virnucpro_triton.export import export_repository
from virnucpro_triton.export.fp8_choice import Fp8Refused
from virnucpro_triton.export.tiny import TINY_ESM2
from virnucpro_triton.models.esm2 import ESM2_SIZES, Esm2, Esm2Config, TransformerLayer
from virnucpro_triton.models.fp8 import Fp8Linear, fp8_unavailable, to_fp8
from virnucpro_triton.repository import FP8_FEED_FORWARD as FEED_FORWARD
from virnucpro_triton.repository import FP8_NONE as NONE
from virnucpro_triton.sequence import six_frames
from virnucpro_triton.sequence_embedders import ProteinEmbedder
from virnucpro_triton.server import EmbeddedServer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def proteins_of(count: int, longest: int) -> list[str]:
    """The proteins of the kept frames of stop-free DNA of random lengths up to `longest` bases."""
    rng = random.Random(0)
    found: list[str] = []
    while len(found) < count:
        dna = "".join(rng.choices(STOP_FREE_CODONS, k=rng.randrange(longest // 6, longest // 3)))
        found += [frame.protein for frame in six_frames(dna) if frame is not None]
    return found[:count]


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
    assert worst_difference(tmp_path, tiny_repository, MIXED, chunk_size) <= 1e-5


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


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_packed_attention_on_the_gpu_equals_padded(tmp_path, dtype):
    """Half precision on a GPU packs ESM-2's batches (flash varlen): the padded path's results,
    eager and compiled, within rounding; fp32 keeps the padded path."""
    torch.manual_seed(0)
    device = torch.device("cuda")
    model = Esm2(Esm2Config(*ESM2_SIZES["esm2_t12_35M_UR50D"])).to(device, dtype).eval()
    proteins = proteins_of(600, 500)
    padded = TorchBackend(model, device)
    padded.packed = False
    reference = torch.from_numpy(ProteinEmbedder(padded)(proteins))
    for compiled in (False, True):
        backend = TorchBackend(model, device, compiled)
        assert backend.packed
        got = torch.from_numpy(ProteinEmbedder(backend)(proteins))
        assert torch.cosine_similarity(got, reference).min() >= 0.9999
    assert not TorchBackend(copy.deepcopy(model).float(), device).packed


needs_fp8 = pytest.mark.skipif(
    torch.cuda.is_available() and fp8_unavailable(torch.device("cuda")) is not None,
    reason="needs a GPU with FP8 (sm_89+)",
)


@needs_fp8
def test_fp8_feed_forward_runs_compiled_and_stays_close_to_bf16(tmp_path):
    # The 650M shape with random weights; compiled as served.
    torch.manual_seed(0)
    model = Esm2(Esm2Config(*ESM2_SIZES["esm2_t33_650M_UR50D"])).to("cuda", torch.bfloat16)
    proteins = proteins_of(300, 300)
    device = torch.device("cuda")
    bf16 = ProteinEmbedder(TorchBackend(model, device))(proteins)
    fp8_model = copy.deepcopy(model)
    to_fp8(fp8_model, fp8_layers(FEED_FORWARD, fp8_model))
    assert isinstance(fp8_model.layers[0].fc1, Fp8Linear)
    eager = ProteinEmbedder(TorchBackend(fp8_model, device))(proteins)
    compiled = ProteinEmbedder(TorchBackend(fp8_model, device, compiled=True))(proteins)

    def cosine(a, b):
        return torch.cosine_similarity(torch.from_numpy(a), torch.from_numpy(b)).min().item()

    assert len(proteins) > 100
    assert cosine(eager, compiled) >= 0.9999  # compiling does not change the FP8 arithmetic
    assert 0.995 <= cosine(bf16, compiled) < 0.99999  # FP8 ran, and stayed close


@needs_fp8
def test_fp8_export_is_verified_on_the_gpu_and_refused_out_of_tolerance(tmp_path):
    # The tiny model's 32-wide layers lose more to FP8 than the rule accepts.
    with pytest.raises(
        Fp8Refused, match=r"refused to write esm2 with fp8 feed_forward: .* on NVIDIA"
    ):
        export_repository(tmp_path, tiny=True, dtype="bf16", fp8="feed_forward", report=print)
    assert not (tmp_path / repo.ESM2).exists()


@needs_fp8
@torch.inference_mode()
def test_emulated_fp8_matches_the_gpus_fp8_matmul():
    """Export decides FP8 by emulation where it has no FP8 GPU: the emulated product must be the
    GPU's up to accumulation order and bf16 rounding (ESM-2 3B's fc1 shape)."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(2560, 10240).to("cuda", torch.bfloat16)
    x = torch.randn(512, 2560, device="cuda", dtype=torch.bfloat16)
    real = Fp8Linear(linear)(x).float()
    emulated = Fp8Linear(linear, emulate=True)(x).float()
    exact = linear(x).float()
    assert (real - emulated).norm() / real.norm() < 5e-3  # bf16 rounding, not FP8's error
    assert (real - exact).norm() / exact.norm() > 10 * ((real - emulated).norm() / real.norm())


@needs_fp8
def test_served_esm2_applies_its_fp8_parameter(mixed_fasta, tmp_path):
    repository = tmp_path / "repository"
    export_repository(repository, tiny=True, dtype="bf16", report=lambda _: None)
    outputs = {}
    for fp8 in (NONE, FEED_FORWARD):
        dim = TINY_ESM2.embed_dim
        config = repo.entry_config(repo.spec_of(repo.ESM2), {repo.WIDTH: dim}, {"fp8": fp8})
        repo.write_entry(repository, config)
        log = tmp_path / f"{fp8}.log"
        with EmbeddedServer(repository, log_path=log) as server:
            predict(mixed_fasta, 500, tmp_path / fp8, server.grpc_url, progress=False)
        loaded = [line for line in log.read_text().splitlines() if "loaded esm2 " in line]
        applied = "compiled fp8 feed_forward) on cuda:0"
        assert loaded and all((applied in line) == (fp8 != NONE) for line in loaded), loaded
        outputs[fp8] = read_rows(tmp_path / fp8)
    a, b = outputs.values()
    assert a.keys() == b.keys()
    assert 0 < max(abs(a[k][2] - b[k][2]) for k in a) < 0.05


@torch.inference_mode()
def test_fc1_gelu_epilogue_in_bf16_is_as_close_to_fp32_erf_gelu_as_unfused():
    torch.manual_seed(0)
    layer = TransformerLayer(640, 20, 1e-5).cuda()  # the 150M shape, fp32
    x = torch.randn(4, 100, 640, device="cuda")
    reference = torch.nn.functional.gelu(layer.fc1(x))  # fp32, erf: what ESM-2 was trained with
    assert torch.equal(layer._fc1_gelu(x), reference)  # fp32 keeps the exact GELU
    half, x16 = copy.deepcopy(layer).bfloat16(), x.bfloat16()
    fused = half._fc1_gelu(x16).float()
    unfused = torch.nn.functional.gelu(half.fc1(x16)).float()

    def error(out: torch.Tensor) -> float:
        return ((out - reference).norm() / reference.norm()).item()

    assert not torch.equal(fused, unfused)  # the epilogue ran: it rounds once, not twice
    assert error(fused) <= 1.1 * error(unfused) and error(fused) < 5e-3


# The batch-invariant mode (repository/spec.py BATCH_INVARIANT) in bf16, where kernels choose
# their tiling and reduction order by the batch's shape, and in fp32.


@pytest.fixture(scope="module")
def bf16_invariant(tmp_path_factory) -> Path:
    return export_invariant(tmp_path_factory.mktemp("bf16_invariant") / "repository", "bf16")


@pytest.mark.parametrize("name", [repo.DNABERT_S, repo.ESM2])
def test_bf16_invariant_embedders_give_a_sequence_the_same_bytes_in_any_batch(bf16_invariant, name):
    sequences = random_sequences(name, 240)
    alone = random.Random(5).sample(range(len(sequences)), 12)
    embed = served_embedder(bf16_invariant, name, torch.device("cuda"))
    assert not embed.backend.compiled  # compiled kernels are tuned per machine
    differing = differing_from_whole(embedded_in_batchings(embed, sequences, alone), alone)
    assert set(differing.values()) == {0}, differing


def test_bf16_invariant_results_are_the_same_bytes_however_sent(bf16_invariant, tmp_path):
    records = write_records(tmp_path / "records.fa")
    other = tmp_path / "other.fa"
    other.write_text("".join(f">other_{i}\n{read}\n" for i, read in enumerate(reads(11, 8))))
    out = {way: tmp_path / way for way in ("whole", "one_chunk", "concurrent", "second_server")}
    log = tmp_path / "first.log"
    with EmbeddedServer(bf16_invariant, log_path=log) as server:
        url = server.grpc_url
        predict(records, CHUNK_SIZE, out["whole"], url, batch_chunks=512, progress=False)
        predict(records, CHUNK_SIZE, out["one_chunk"], url, batch_chunks=1, progress=False)
        summary, answered = beside_another_client(
            server,
            other,
            lambda: predict(
                records, CHUNK_SIZE, out["concurrent"], url, batch_chunks=7, progress=False
            ),
        )
    with EmbeddedServer(bf16_invariant, log_path=tmp_path / "second.log") as second:
        predict(records, CHUNK_SIZE, out["second_server"], second.grpc_url, progress=False)
    loaded = [line for line in log.read_text().splitlines() if "virnucpro-triton: loaded" in line]
    for name in INVARIANT_ENTRIES:
        lines = [line for line in loaded if f" loaded {name} (" in line]
        assert lines and all("batch-invariant) on cuda:0" in line for line in lines), lines
        assert not any("compiled" in line for line in lines), lines  # tuned per machine
    assert answered > -(-summary.chunks // 7)  # the run's own requests and the other client's
    for way in ("one_chunk", "concurrent", "second_server"):
        assert_same_results(out["whole"], out[way])


def test_fp32_invariant_results_on_the_gpu_equal_cpu_reference(mixed_fasta, tmp_path):
    repository = export_invariant(tmp_path / "repository")
    with EmbeddedServer(repository) as server:
        predict(mixed_fasta, CHUNK_SIZE, tmp_path / "out", server.grpc_url, progress=False)
    assert worst_difference(tmp_path / "out", repository, MIXED, CHUNK_SIZE) <= 1e-5
