"""Loading the real checkpoint formats, strictly and without running pickled code."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from fake_checkpoints import (
    write_dnabert_s_dir,
    write_fair_esm_pt,
    write_hf_esm_dir,
    write_malicious_pth,
    write_virnucpro_classifier_pth,
)
from inputs import peak_rss_mib
from safetensors.torch import load_file, save_file

from virnucpro_triton.export.checkpoints import (
    CheckpointError,
    load_classifier,
    load_dnabert_s,
    load_esm2,
)
from virnucpro_triton.models.dnabert_s import DnabertConfig
from virnucpro_triton.models.esm2 import PAD_IDX, encode_protein, pad_batch

TINY_DNABERT = DnabertConfig(
    vocab_size=128, hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
)


def assert_state_equal(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert set(state) == set(expected)
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


# ---- DNABERT-S ----


@pytest.mark.parametrize(
    ("fmt", "prefix"),
    [("bin", ""), ("safetensors", ""), ("bin", "bert."), ("safetensors", "bert.")],
)
def test_load_dnabert_s_formats(tmp_path, fmt, prefix):
    write_dnabert_s_dir(tmp_path, TINY_DNABERT, seed=1, fmt=fmt, prefix=prefix)
    model, config, tokenizer_path = load_dnabert_s(tmp_path)
    assert config == TINY_DNABERT
    assert tokenizer_path == tmp_path / "tokenizer.json"
    assert not model.training
    if fmt == "bin":
        written = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
    else:
        written = load_file(tmp_path / "model.safetensors")
    expected = {
        k.removeprefix(prefix): v
        for k, v in written.items()
        if k.startswith(prefix) and not k.removeprefix(prefix).startswith("pooler.")
    }
    assert_state_equal(model, expected)


def test_dna_tokenizer_layout(tmp_path):
    write_dnabert_s_dir(tmp_path, TINY_DNABERT)
    _, _, tokenizer_path = load_dnabert_s(tmp_path)
    tokenizer_json = json.loads(tokenizer_path.read_text())
    special = {t["content"]: t["id"] for t in tokenizer_json["added_tokens"]}
    assert special == {"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, "[PAD]": 3, "[MASK]": 4}
    assert tokenizer_json["model"]["type"] == "BPE"
    assert len(tokenizer_json["model"]["vocab"]) == TINY_DNABERT.vocab_size
    # Deterministic: the same (vocab, seed) gives the same file.
    write_dnabert_s_dir(tmp_path / "again", TINY_DNABERT)
    assert (tmp_path / "again" / "tokenizer.json").read_text() == tokenizer_path.read_text()


def _resave_bin(directory, edit) -> None:
    path = directory / "pytorch_model.bin"
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)


def test_dnabert_missing_and_unexpected_keys_are_listed(tmp_path):
    write_dnabert_s_dir(tmp_path, TINY_DNABERT)

    def edit(state):
        del state["encoder.layer.1.mlp.wo.bias"]
        state["encoder.layer.0.attention.self.extra"] = torch.zeros(1)

    _resave_bin(tmp_path, edit)
    with pytest.raises(CheckpointError) as error:
        load_dnabert_s(tmp_path)
    message = str(error.value)
    assert "pytorch_model.bin" in message
    assert "missing keys: encoder.layer.1.mlp.wo.bias" in message
    assert "unexpected keys: encoder.layer.0.attention.self.extra" in message


def test_dnabert_shape_mismatch_is_listed(tmp_path):
    write_dnabert_s_dir(tmp_path, TINY_DNABERT)
    config = json.loads((tmp_path / "config.json").read_text())
    config["intermediate_size"] = 32
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="shape mismatches") as error:
        load_dnabert_s(tmp_path)
    assert "encoder.layer.1.mlp.wo.weight (48, 64) (model (48, 32))" in str(error.value)
    assert "encoder.layer.0.mlp.gated_layers.weight" in str(error.value)


def test_dnabert_needs_weights_and_tokenizer(tmp_path):
    write_dnabert_s_dir(tmp_path, TINY_DNABERT)
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        load_dnabert_s(tmp_path)
    (tmp_path / "pytorch_model.bin").unlink()
    with pytest.raises(CheckpointError, match="neither model.safetensors nor pytorch_model.bin"):
        load_dnabert_s(tmp_path)


def test_dnabert_malicious_bin_is_refused(tmp_path):
    write_dnabert_s_dir(tmp_path, TINY_DNABERT)
    marker = write_malicious_pth(tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="refused to unpickle global posix.system"):
        load_dnabert_s(tmp_path)
    assert not marker.exists()


# ---- ESM-2 ----


def fair_esm_trunk(reference: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        k: v
        for k, v in reference.state_dict().items()
        if not k.startswith(("contact_head.", "lm_head."))
    }


@pytest.mark.parametrize("cfg_key", ["cfg", "args"])
def test_load_fair_esm_pt(tmp_path, cfg_key):
    path = tmp_path / "esm2.pt"
    reference = write_fair_esm_pt(path, num_layers=2, embed_dim=64, heads=4, cfg_key=cfg_key)
    model, config = load_esm2(path)
    assert (config.num_layers, config.embed_dim, config.attention_heads) == (2, 64, 4)
    assert config.token_dropout and config.layer_norm_eps == 1e-5
    assert not model.training
    assert_state_equal(model, fair_esm_trunk(reference))


def test_fair_esm_half_precision_file_loads_as_float32(tmp_path):
    path = tmp_path / "esm2.pt"
    reference = write_fair_esm_pt(path, num_layers=2, embed_dim=64, heads=4, half=True)
    model, _ = load_esm2(path)
    assert {p.dtype for p in model.state_dict().values()} == {torch.float32}
    assert_state_equal(model, fair_esm_trunk(reference))


@torch.no_grad()
def test_fair_esm_without_cfg_infers_heads_from_released_sizes(tmp_path):
    path = tmp_path / "esm2.pt"
    # Width 320 is esm2_t6_8M's: 20 heads; a wrong head count would change the output.
    reference = write_fair_esm_pt(path, num_layers=1, embed_dim=320, heads=20, cfg_key=None)
    model, config = load_esm2(path)
    assert (config.num_layers, config.embed_dim, config.attention_heads) == (1, 320, 20)
    tokens = pad_batch([encode_protein("MKTAYIAKQR"), encode_protein("MA")], PAD_IDX)
    expected = reference(tokens, repr_layers=[1])["representations"][1]
    real = tokens.ne(PAD_IDX)
    assert (model(tokens)[real] - expected[real]).abs().max() <= 1e-5


def test_fair_esm_unknown_width_without_cfg_is_an_error(tmp_path):
    path = tmp_path / "esm2.pt"
    write_fair_esm_pt(path, num_layers=2, embed_dim=64, heads=4, cfg_key=None)
    with pytest.raises(CheckpointError, match="no attention head count"):
        load_esm2(path)


def test_fair_esm_key_errors_are_listed(tmp_path):
    path = tmp_path / "esm2.pt"
    write_fair_esm_pt(path, num_layers=2, embed_dim=64, heads=4, cfg_key=None)
    data = torch.load(path, weights_only=True)
    del data["model"]["encoder.sentence_encoder.layers.1.fc2.bias"]
    data["model"]["encoder.sentence_encoder.layers.0.fc1.weight"] = torch.zeros(3, 64)
    data["cfg"] = {"model": {"encoder_attention_heads": 4}}  # a plain-dict cfg also works
    torch.save(data, path)
    with pytest.raises(CheckpointError) as error:
        load_esm2(path)
    message = str(error.value)
    assert "esm2.pt" in message
    assert "missing keys: layers.1.fc2.bias" in message
    assert "layers.0.fc1.weight (3, 64) (model (256, 64))" in message


def test_malicious_esm_pt_is_refused(tmp_path):
    marker = write_malicious_pth(tmp_path / "esm2.pt", via="exec")
    with pytest.raises(CheckpointError, match="refused to unpickle global"):
        load_esm2(tmp_path / "esm2.pt")
    assert not marker.exists()


def test_load_hf_esm_keys(tmp_path):
    reference = write_hf_esm_dir(tmp_path, num_layers=2, embed_dim=64, heads=4, masked_lm=True)
    model, config = load_esm2(tmp_path)
    assert config.layer_norm_eps == reference.config.layer_norm_eps
    ours = model.state_dict()
    theirs = reference.state_dict()
    pairs = {
        "embed_tokens.weight": "embeddings.word_embeddings.weight",
        "layers.1.self_attn.q_proj.weight": "encoder.layer.1.attention.self.query.weight",
        "layers.1.self_attn.v_proj.bias": "encoder.layer.1.attention.self.value.bias",
        "layers.1.self_attn.out_proj.weight": "encoder.layer.1.attention.output.dense.weight",
        "layers.1.self_attn_layer_norm.weight": "encoder.layer.1.attention.LayerNorm.weight",
        "layers.1.fc1.weight": "encoder.layer.1.intermediate.dense.weight",
        "layers.1.fc2.bias": "encoder.layer.1.output.dense.bias",
        "layers.1.final_layer_norm.bias": "encoder.layer.1.LayerNorm.bias",
        "emb_layer_norm_after.weight": "encoder.emb_layer_norm_after.weight",
        "layers.1.self_attn.rot_emb.inv_freq": "rotary_embeddings.inv_freq",
    }
    for ours_key, theirs_key in pairs.items():
        assert torch.equal(ours[ours_key], theirs[theirs_key]), ours_key


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"position_embedding_type": "absolute"}, "not an ESM-2 config"),
        ({"intermediate_size": 100}, "intermediate_size=100"),
        ({"layer_norm_eps": None}, "missing 'layer_norm_eps'"),
    ],
)
def test_hf_esm_config_errors(tmp_path, change, message):
    write_hf_esm_dir(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(change)
    config = {k: v for k, v in config.items() if v is not None}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=message):
        load_esm2(tmp_path)


# ---- classifier ----


@pytest.fixture(scope="module")
def virnucpro_pth(tmp_path_factory):
    path = tmp_path_factory.mktemp("classifier") / "300_model.pth"
    reference = write_virnucpro_classifier_pth(path, input_dim=3328, seed=4)
    x = torch.randn(8, 3328, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = torch.softmax(reference(x), dim=-1)
    return path, reference, x, expected


def test_pickled_module_globals_are_the_expected_ones(virnucpro_pth):
    path, *_ = virnucpro_pth
    assert set(torch.serialization.get_unsafe_globals_in_checkpoint(path)) == {
        "__main__.MLPClassifier",
        "torch.nn.modules.linear.Linear",
        "torch.nn.modules.batchnorm.BatchNorm1d",
        "torch.nn.modules.dropout.Dropout",
    }


@torch.no_grad()
def test_load_whole_pickled_classifier(virnucpro_pth):
    path, reference, x, expected = virnucpro_pth
    model = load_classifier(path)
    assert not model.training
    assert model.bn1.num_batches_tracked.item() == 1234
    assert_state_equal(model, reference.state_dict())
    assert (model(x) - expected).abs().max() <= 1e-6
    # Eval mode matters: batch statistics would give other numbers.
    assert (model.train()(x) - expected).abs().max() > 1e-3


@torch.no_grad()
def test_pickled_module_with_relu_submodule(tmp_path, virnucpro_pth):
    _, _, x, expected = virnucpro_pth
    path = tmp_path / "with_relu.pth"
    write_virnucpro_classifier_pth(path, input_dim=3328, seed=4, relu_module=True)
    assert (
        "torch.nn.modules.activation.ReLU"
        in torch.serialization.get_unsafe_globals_in_checkpoint(path)
    )
    assert (load_classifier(path)(x) - expected).abs().max() <= 1e-6


@torch.no_grad()
@pytest.mark.parametrize("form", ["state_dict.pth", "state_dict.safetensors"])
def test_load_classifier_state_dict_forms(tmp_path, virnucpro_pth, form):
    _, reference, x, expected = virnucpro_pth
    path = tmp_path / form
    if form.endswith(".safetensors"):
        save_file(reference.state_dict(), path)
    else:
        torch.save(reference.state_dict(), path)
    assert (load_classifier(path)(x) - expected).abs().max() <= 1e-6


def test_load_classifier_infers_dims(tmp_path):
    path = tmp_path / "small.pth"
    write_virnucpro_classifier_pth(path, input_dim=40, hidden_dim=16)
    model = load_classifier(path)
    assert (model.hidden_layer.in_features, model.hidden_layer.out_features) == (40, 16)


@pytest.mark.parametrize(("via", "name"), [("system", "posix.system"), ("exec", "builtins.exec")])
def test_malicious_classifier_is_refused(tmp_path, via, name):
    path = tmp_path / "300_model.pth"
    marker = write_malicious_pth(path, via=via)
    # The file really carries the dangerous call; the loader must refuse it unexecuted.
    assert name in torch.serialization.get_unsafe_globals_in_checkpoint(path)
    with pytest.raises(CheckpointError, match=f"300_model.pth: refused to unpickle global {name}"):
        load_classifier(path)
    assert not marker.exists()


def test_unreadable_file_is_a_checkpoint_error(tmp_path):
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth: cannot read as a torch checkpoint"):
        load_classifier(tmp_path / "junk.pth")
    with pytest.raises(CheckpointError, match="absent.pt: no such file"):
        load_esm2(tmp_path / "absent.pt")


def test_other_pickled_modules_are_refused(tmp_path):
    path = tmp_path / "conv.pth"
    torch.save(torch.nn.Conv1d(2, 2, 3), path)
    with pytest.raises(CheckpointError, match="torch.nn.modules.conv.Conv1d"):
        load_classifier(path)


def test_classifier_wrong_keys(tmp_path, virnucpro_pth):
    _, reference, *_ = virnucpro_pth
    state = dict(reference.state_dict())
    del state["bn1.running_var"]
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="missing keys: bn1.running_var"):
        load_classifier(tmp_path / "bad.pth")


# ---- config.json values, through `export` ----

CLI = str(Path(sys.executable).parent / "virnucpro-triton")


def export_refusal(tmp_path: Path, option: str, directory: Path) -> tuple[str, float]:
    """`export` of one model directory: its one-line refusal and the command's peak RSS."""
    command = [CLI, "export", "--out", str(tmp_path / "repository"), option, str(directory)]
    result, peak = peak_rss_mib(command)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr
    assert not (tmp_path / "repository").exists()
    return result.stderr, peak


def with_config(directory: Path, change) -> Path:
    config = json.loads((directory / "config.json").read_text())
    config = change if isinstance(change, list) else {**config, **change}
    (directory / "config.json").write_text(json.dumps(config))
    return directory / "config.json"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"num_hidden_layers": 20_000},
            ": does not fit .*: num_hidden_layers=20000 but the weights",
        ),
        (
            {"num_hidden_layers": 100_000},
            ": does not fit .*: num_hidden_layers=100000 but the weights hold 2$",
        ),
        ({"hidden_size": "abc"}, ': hidden_size must be a whole number >= 1, not "abc"$'),
        ({"num_attention_heads": 0}, ": num_attention_heads must be a whole number >= 1, not 0$"),
        ({"num_attention_heads": 5}, ": num_attention_heads=5 does not divide the width 48$"),
        ({"intermediate_size": -64}, ": intermediate_size must be a whole number >= 1, not -64$"),
        ({"layer_norm_eps": "1e-12"}, ': layer_norm_eps must be a finite number > 0, not "1e-12"$'),
        ({"vocab_size": True}, ": vocab_size must be a whole number >= 1, not true$"),
        ([1, 2], ": expected a JSON object, found an array$"),
    ],
)
def test_dnabert_config_values_are_checked_before_any_model_is_built(tmp_path, change, message):
    write_dnabert_s_dir(tmp_path / "dnabert", TINY_DNABERT)
    config = with_config(tmp_path / "dnabert", change)
    stderr, peak = export_refusal(tmp_path, "--dnabert-s", tmp_path / "dnabert")
    assert re.match(f"virnucpro-triton: error: {re.escape(str(config))}{message}", stderr.strip())
    assert peak < 1024, peak  # building the 20,000 declared layers would pass it


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_hidden_layers": 100_000}, ": does not fit .*: num_hidden_layers=100000 but the"),
        ({"hidden_size": "abc"}, ': hidden_size must be a whole number >= 1, not "abc"$'),
        ({"num_attention_heads": 0}, ": num_attention_heads must be a whole number >= 1, not 0$"),
        ({"layer_norm_eps": -1e-5}, ": layer_norm_eps must be a finite number > 0, not -1e-05$"),
        ({"token_dropout": "yes"}, ': token_dropout must be true or false, not "yes"$'),
        ({"num_hidden_layers": None}, ": missing 'num_hidden_layers'$"),
        ([], ": expected a JSON object, found an array$"),
    ],
)
def test_hf_esm_config_values_are_checked_before_any_model_is_built(tmp_path, change, message):
    write_hf_esm_dir(tmp_path / "esm")
    if isinstance(change, dict) and None in change.values():
        change = {
            k: v
            for k, v in json.loads((tmp_path / "esm" / "config.json").read_text()).items()
            if k not in change
        }
        (tmp_path / "esm" / "config.json").write_text(json.dumps(change))
        config = tmp_path / "esm" / "config.json"
    else:
        config = with_config(tmp_path / "esm", change)
    stderr, peak = export_refusal(tmp_path, "--esm2", tmp_path / "esm")
    assert re.match(f"virnucpro-triton: error: {re.escape(str(config))}{message}", stderr.strip())
    assert peak < 1024, peak
