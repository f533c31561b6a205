"""Numerics of the project's DNABERT-S, ESM-2 and classifier modules against references."""

from __future__ import annotations

import copy
import math
import random

import pytest
import torch
from fake_checkpoints import write_dnabert_s_dir, write_fair_esm_pt, write_hf_esm_dir
from tokenizers import Tokenizer

from virnucpro_triton.export.checkpoints import load_dnabert_s, load_esm2
from virnucpro_triton.models.dnabert_s import DnabertConfig, DnabertS, alibi_slopes
from virnucpro_triton.models.esm2 import (
    CLS_IDX,
    EOS_IDX,
    MASK_IDX,
    PAD_IDX,
    UNK_IDX,
    Esm2,
    Packed,
    encode_protein,
    pad_batch,
)
from virnucpro_triton.models.mlp import MLPClassifier

# Length 1, every alphabet letter, an unknown letter (J), a longer one.
PROTEINS = [
    "MKTAYIAKQRQISFVKSHFSRQ",
    "A",
    "LAGVSERTIDPKQNFYMHWCXBUZO",
    "MKVJLAG",
    "MSTNPKPQRKTKRNTNRRPQDVKFPGG" * 3,
]
DESIGN_SLOPES_12 = [0.5**i for i in range(1, 9)] + [2**-0.5, 2**-1.5, 2**-2.5, 2**-3.5]
TINY_DNABERT = DnabertConfig(
    vocab_size=256,
    hidden_size=96,
    num_hidden_layers=2,
    num_attention_heads=12,  # the real head count, so the real model's ALiBi slopes apply
    intermediate_size=128,
)


def residue_mean(hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """VirNucPro's ESM feature from a reference model's [B, L, D] output."""
    keep = ~(tokens.eq(CLS_IDX) | tokens.eq(EOS_IDX) | tokens.eq(PAD_IDX))
    return (hidden * keep[..., None]).sum(1) / keep.sum(1, keepdim=True)


@pytest.fixture(scope="module")
def protein_tokens() -> torch.Tensor:
    return pad_batch([encode_protein(p) for p in PROTEINS], PAD_IDX)


@pytest.fixture(scope="module")
def fair_esm(tmp_path_factory):
    path = tmp_path_factory.mktemp("esm") / "esm2_t2_tiny.pt"
    reference = write_fair_esm_pt(path, num_layers=2, embed_dim=64, heads=4, seed=1)
    model, _ = load_esm2(path)
    return reference, model


def test_encode_protein_matches_fair_esm():
    import esm

    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    known = [p for p in PROTEINS if "J" not in p]
    _, _, expected = alphabet.get_batch_converter()([(str(i), p) for i, p in enumerate(known)])
    assert torch.equal(pad_batch([encode_protein(p) for p in known], PAD_IDX), expected)
    # fair-esm raises KeyError on a letter outside its alphabet; we map it to <unk>.
    assert encode_protein("MJ") == [CLS_IDX, alphabet.get_idx("M"), UNK_IDX, EOS_IDX]


def test_pad_batch_right_pads():
    assert pad_batch([[5, 6, 7], [8]], 1).tolist() == [[5, 6, 7], [8, 1, 1]]


@torch.no_grad()
def test_esm2_matches_fair_esm(fair_esm, protein_tokens):
    reference, model = fair_esm
    ref_hidden = reference(protein_tokens, repr_layers=[2])["representations"][2]
    ours = model.embed(protein_tokens)
    assert ours.dtype == torch.float32
    assert (ours - residue_mean(ref_hidden, protein_tokens)).abs().max() <= 1e-5
    # Per token too, at every real position.
    real = protein_tokens.ne(PAD_IDX)
    assert (model(protein_tokens)[real] - ref_hidden[real]).abs().max() <= 1e-5


@torch.no_grad()
def test_esm2_token_dropout_is_per_sequence(fair_esm, protein_tokens):
    reference, model = fair_esm
    tokens = protein_tokens.clone()
    tokens[0, 3] = MASK_IDX  # changes the rescaling of sequence 0 only
    ref_hidden = reference(tokens, repr_layers=[2])["representations"][2]
    real = tokens.ne(PAD_IDX)
    assert (model(tokens)[real] - ref_hidden[real]).abs().max() <= 1e-5


@torch.no_grad()
def test_esm2_bf16_close_to_fp32(fair_esm, protein_tokens):
    _, model = fair_esm
    fp32 = model.embed(protein_tokens)
    bf16_model = copy.deepcopy(model).to(torch.bfloat16)
    # Rotary frequencies stay fp32 (rounding them would move far positions).
    assert bf16_model.layers[0].self_attn.rot_emb.inv_freq.dtype == torch.float32
    assert bf16_model.layers[0].fc1.weight.dtype == torch.bfloat16
    bf16 = bf16_model.embed(protein_tokens)
    assert bf16.dtype == torch.float32
    assert torch.cosine_similarity(bf16, fp32).min() >= 0.999


def per_sequence_attention(q, k, v, cu_q, cu_k, max_q, max_k):
    """flash varlen's contract on the CPU: attention within each cu_q span, 1/sqrt(d) scale."""
    assert torch.equal(cu_q, cu_k) and max_q == max_k == int((cu_q[1:] - cu_q[:-1]).max())
    out = torch.full_like(q, float("nan"))  # a token left out would poison its sequence
    for start, end in zip(cu_q[:-1].tolist(), cu_q[1:].tolist(), strict=True):
        span = [t[start:end].transpose(0, 1) for t in (q, k, v)]
        out[start:end] = torch.nn.functional.scaled_dot_product_attention(*span).transpose(0, 1)
    return out


@torch.no_grad()
def test_esm2_packed_matches_fair_esm(fair_esm, monkeypatch):
    """The GPU's packed layout (sequences end to end, no padding) is fair-esm's math: here with
    the flash kernel's contract computed per sequence, a <mask> in one sequence only."""
    import torch.nn.attention.varlen

    monkeypatch.setattr(torch.nn.attention.varlen, "varlen_attn", per_sequence_attention)
    reference, model = fair_esm
    rows = [encode_protein(p) for p in PROTEINS]
    rows[0][3] = MASK_IDX
    padded = pad_batch(rows, PAD_IDX)
    expected = residue_mean(reference(padded, repr_layers=[2])["representations"][2], padded)
    packed = Packed.of([len(r) for r in rows])
    assert packed.positions.tolist()[: len(rows[0]) + 2] == [*range(len(rows[0])), 0, 1]
    ours = model.embed_packed(torch.tensor([t for r in rows for t in r]), packed)
    assert (ours - expected).abs().max() <= 1e-5


def test_packed_embedder_batches_real_tokens_and_keeps_input_order(fair_esm, monkeypatch):
    import torch.nn.attention.varlen

    from virnucpro_triton.backends.torch_backend import TorchBackend
    from virnucpro_triton.sequence_embedders import ProteinEmbedder, _batches

    monkeypatch.setattr(torch.nn.attention.varlen, "varlen_attn", per_sequence_attention)
    _, model = fair_esm
    # Padded, [3, 10] costs 2 x 10 tokens; packed, 13.
    assert _batches([3, 10, 10], 20, 8) == [[0, 1], [2]]
    assert _batches([3, 10, 10], 13, 8, padded=False) == [[0, 1], [2]]
    assert _batches([3, 10, 10], 23, 8, padded=False) == [[0, 1, 2]]
    proteins = random.Random(3).choices(PROTEINS, k=40)
    padded = ProteinEmbedder(TorchBackend(model, torch.device("cpu")))(proteins)
    backend = TorchBackend(model, torch.device("cpu"))
    backend.packed = True  # what a CUDA GPU in half precision sets
    packed = ProteinEmbedder(backend, token_budget=200, max_rows=7)
    assert abs(packed(proteins) - padded).max() <= 1e-5


@pytest.mark.parametrize(("masked_lm", "hub_layout"), [(False, False), (True, True)])
@torch.no_grad()
def test_esm2_matches_transformers(tmp_path, protein_tokens, masked_lm, hub_layout):
    reference = write_hf_esm_dir(tmp_path, seed=2, masked_lm=masked_lm, hub_layout=hub_layout)
    model, config = load_esm2(tmp_path)
    assert (config.num_layers, config.embed_dim, config.attention_heads) == (2, 64, 4)
    mask = protein_tokens.ne(PAD_IDX).long()
    hidden = reference(input_ids=protein_tokens, attention_mask=mask).last_hidden_state
    expected = residue_mean(hidden, protein_tokens)
    assert (model.embed(protein_tokens) - expected).abs().max() <= 1e-5


def test_alibi_slopes():
    assert torch.allclose(alibi_slopes(12), torch.tensor(DESIGN_SLOPES_12), rtol=0, atol=1e-7)
    assert torch.allclose(alibi_slopes(8), torch.tensor([0.5**i for i in range(1, 9)]))
    # 6 heads: the 4-head slopes, then every other slope of the 8-head list.
    expected_6 = [2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3]
    assert torch.allclose(alibi_slopes(6), torch.tensor(expected_6))


def test_dnabert_state_dict_keys_match_release():
    with torch.device("meta"):
        model = DnabertS(DnabertConfig())
    expected = {
        "embeddings.word_embeddings.weight",
        "embeddings.token_type_embeddings.weight",
        "embeddings.LayerNorm.weight",
        "embeddings.LayerNorm.bias",
    }
    for n in range(12):
        for name in (
            "attention.self.Wqkv.weight",
            "attention.self.Wqkv.bias",
            "attention.output.dense.weight",
            "attention.output.dense.bias",
            "attention.output.LayerNorm.weight",
            "attention.output.LayerNorm.bias",
            "mlp.gated_layers.weight",
            "mlp.wo.weight",
            "mlp.wo.bias",
            "mlp.layernorm.weight",
            "mlp.layernorm.bias",
        ):
            expected.add(f"encoder.layer.{n}.{name}")
    state = model.state_dict()
    assert set(state) == expected
    assert state["encoder.layer.0.mlp.gated_layers.weight"].shape == (6144, 768)
    assert state["encoder.layer.0.attention.self.Wqkv.weight"].shape == (2304, 768)


@pytest.fixture(scope="module")
def dnabert(tmp_path_factory):
    directory = write_dnabert_s_dir(tmp_path_factory.mktemp("dnabert"), TINY_DNABERT, seed=3)
    model, _, tokenizer_path = load_dnabert_s(directory)
    state = torch.load(directory / "pytorch_model.bin", weights_only=True)
    return model, Tokenizer.from_file(str(tokenizer_path)), state


def dna_token_ids(tokenizer: Tokenizer, lengths: list[int], seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [tokenizer.encode("".join(rng.choices("ACGT", k=n))).ids for n in lengths]


def naive_dnabert_embed(state: dict, config: DnabertConfig, ids: list[int]) -> torch.Tensor:
    """Unbatched float64 reference: explicit softmax attention with the real ALiBi slopes."""
    sd = {k: v.double() for k, v in state.items()}
    hidden, heads, inter = config.hidden_size, config.num_attention_heads, config.intermediate_size
    head_dim, length = hidden // heads, len(ids)

    def layer_norm(x, prefix):
        mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
        normed = (x - mean) / torch.sqrt(var + config.layer_norm_eps)
        return normed * sd[prefix + ".weight"] + sd[prefix + ".bias"]

    def linear(x, prefix):
        return x @ sd[prefix + ".weight"].T + sd.get(prefix + ".bias", 0)

    x = (
        sd["embeddings.word_embeddings.weight"][ids]
        + sd["embeddings.token_type_embeddings.weight"][0]
    )
    x = layer_norm(x, "embeddings.LayerNorm")
    pos = torch.arange(length)
    slopes = torch.tensor(DESIGN_SLOPES_12, dtype=torch.float64)
    alibi = -slopes[:, None, None] * (pos[None, :] - pos[:, None]).abs()
    for n in range(config.num_hidden_layers):
        p = f"encoder.layer.{n}."
        qkv = linear(x, p + "attention.self.Wqkv").view(length, 3, heads, head_dim)
        q, k, v = (qkv[:, i].transpose(0, 1) for i in range(3))
        scores = q @ k.transpose(1, 2) / math.sqrt(head_dim) + alibi
        probs = torch.exp(scores - scores.amax(-1, keepdim=True))
        probs = probs / probs.sum(-1, keepdim=True)
        context = (probs @ v).transpose(0, 1).reshape(length, hidden)
        x = layer_norm(
            linear(context, p + "attention.output.dense") + x, p + "attention.output.LayerNorm"
        )
        h = linear(x, p + "mlp.gated_layers")
        gated, linear_half = h[:, :inter], h[:, inter:]
        gelu = 0.5 * gated * (1 + torch.erf(gated / math.sqrt(2)))
        x = layer_norm(linear(gelu * linear_half, p + "mlp.wo") + x, p + "mlp.layernorm")
    return x.mean(0)


def batch(tokenizer: Tokenizer, ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    pad = tokenizer.token_to_id("[PAD]")
    input_ids = pad_batch(ids, pad)
    mask = torch.zeros_like(input_ids, dtype=torch.bool)
    for row, seq in zip(mask, ids, strict=True):
        row[: len(seq)] = True
    return input_ids, mask


@torch.no_grad()
def test_dnabert_batched_equals_one_at_a_time(dnabert):
    model, tokenizer, _ = dnabert
    ids = dna_token_ids(tokenizer, [1, 40, 301, 501, 170])
    batched = model.embed(*batch(tokenizer, ids))
    assert batched.dtype == torch.float32
    for i, seq in enumerate(ids):
        one = torch.tensor([seq])
        single = model.embed(one, torch.ones_like(one, dtype=torch.bool))
        assert (batched[i] - single[0]).abs().max() <= 1e-5


@torch.no_grad()
def test_dnabert_long_input_matches_naive_reference(dnabert):
    model, tokenizer, state = dnabert
    ids = dna_token_ids(tokenizer, [2500, 300], seed=5)
    assert len(ids[0]) > 512  # past the original's 512-entry ALiBi table
    ours = model.embed(*batch(tokenizer, ids))
    for i, seq in enumerate(ids):
        expected = naive_dnabert_embed(state, TINY_DNABERT, seq)
        assert (ours[i].double() - expected).abs().max() <= 1e-5


@torch.no_grad()
def test_dnabert_half_precision_close_to_fp32(dnabert):
    model, tokenizer, _ = dnabert
    inputs = batch(tokenizer, dna_token_ids(tokenizer, [30, 300, 600], seed=7))
    fp32 = model.embed(*inputs)
    for dtype in (torch.bfloat16, torch.float16):
        low = copy.deepcopy(model).to(dtype).embed(*inputs)
        assert low.dtype == torch.float32
        assert torch.cosine_similarity(low, fp32).min() >= 0.999


def test_classifier_keys_and_probabilities():
    model = MLPClassifier().eval()
    assert set(model.state_dict()) == {
        "hidden_layer.weight",
        "hidden_layer.bias",
        "bn1.weight",
        "bn1.bias",
        "bn1.running_mean",
        "bn1.running_var",
        "bn1.num_batches_tracked",
        "output_layer.weight",
        "output_layer.bias",
    }
    x = torch.randn(4, 3328)
    with torch.no_grad():
        probs = model(x)
        logits = model.output_layer(torch.relu(model.bn1(model.hidden_layer(x))))
    assert probs.shape == (4, 2)
    assert torch.allclose(probs, torch.softmax(logits, -1))


def test_bf16_entry_reloads_exactly_with_fp32_rotary_frequencies(tmp_path):
    from virnucpro_triton import repository as repo
    from virnucpro_triton.export.tiny import TINY_ESM2

    model = Esm2(TINY_ESM2).eval()
    config = repo.entry_config(repo.spec_of(repo.ESM2), {repo.WIDTH: TINY_ESM2.embed_dim})
    repo.write_entry(tmp_path, config, model, repo.architecture_of(repo.ESM2, model, "bf16"))
    loaded, _ = repo.load_model(tmp_path / repo.ESM2 / "1")
    written = model.state_dict()
    for name, tensor in loaded.state_dict().items():
        if name.endswith("inv_freq"):  # not rounded to bf16 on the way (it is not a parameter)
            assert tensor.dtype == torch.float32
            assert torch.equal(tensor, written[name])
        else:
            assert tensor.dtype == torch.bfloat16 and tensor.device.type == "cpu"
            assert torch.equal(tensor, written[name].to(torch.bfloat16)), name
    assert not torch.equal(
        written["layers.0.self_attn.rot_emb.inv_freq"].bfloat16().float(),
        written["layers.0.self_attn.rot_emb.inv_freq"],
    )  # rounding would show
