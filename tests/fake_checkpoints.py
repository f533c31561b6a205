"""Writers of small random-weight checkpoints in the exact on-disk formats of the real releases.

Each returns what a test needs to compare against (a directory, or the reference module).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from google.protobuf import text_format
from safetensors.torch import load_file, save_file
from torch import nn
from tritonclient.grpc import model_config_pb2

from virnucpro_triton.models.dnabert_s import DnabertConfig, DnabertS, build_dna_bpe_tokenizer


def _randomize_layer_norms(model: nn.Module) -> None:
    """Non-default LayerNorm affine parameters, so a wrong or skipped norm shows in the output."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.normal_(1.0, 0.2)
                module.bias.normal_(0.0, 0.2)


def write_dnabert_s_dir(
    directory: str | Path,
    config: DnabertConfig,
    seed: int = 0,
    fmt: str = "bin",
    prefix: str = "",
) -> Path:
    """A DNABERT-S style model directory: config.json, weights, tokenizer.json.

    fmt "bin" writes pytorch_model.bin (torch.save of a dict), "safetensors" model.safetensors.
    prefix "bert." gives DNABERT-2's layout, with an MLM head next to the encoder.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = DnabertS(config)
    _randomize_layer_norms(model)
    h = config.hidden_size
    state = {prefix + k: v for k, v in model.state_dict().items()}
    # The release carries an unused pooler; DNABERT-2 also its MLM head ("cls.").
    state[prefix + "pooler.dense.weight"] = torch.randn(h, h)
    state[prefix + "pooler.dense.bias"] = torch.randn(h)
    if prefix == "bert.":
        state["cls.predictions.transform.dense.weight"] = torch.randn(h, h)
        state["cls.predictions.decoder.weight"] = torch.randn(config.vocab_size, h)
        state["cls.predictions.decoder.bias"] = torch.randn(config.vocab_size)
    if fmt == "bin":
        torch.save(state, directory / "pytorch_model.bin")
    elif fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, directory / "model.safetensors")
    else:
        raise ValueError(f"unknown format {fmt!r}")

    hf_config = {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "alibi_starting_size": 512,
        "attention_probs_dropout_prob": 0.0,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "max_position_embeddings": 512,
        "position_embedding_type": "absolute",
        "torch_dtype": "float32",
        **config.to_dict(),
    }
    (directory / "config.json").write_text(json.dumps(hf_config, indent=2))
    build_dna_bpe_tokenizer(config.vocab_size, seed).save(str(directory / "tokenizer.json"))
    return directory


def _random_fair_esm(num_layers: int, embed_dim: int, heads: int, seed: int) -> nn.Module:
    from esm.model.esm2 import ESM2

    torch.manual_seed(seed)
    model = ESM2(num_layers, embed_dim, heads, alphabet="ESM-1b", token_dropout=True)
    _randomize_layer_norms(model)
    with torch.no_grad():
        for layer in model.layers:
            # The releases store frequencies rounded in training: mimic that, so a loader that
            # recomputes them instead of loading them is caught.
            inv_freq = layer.self_attn.rot_emb.inv_freq
            inv_freq.copy_(inv_freq.half().float())
    return model.eval()


def write_fair_esm_pt(
    path: str | Path,
    num_layers: int,
    embed_dim: int,
    heads: int,
    seed: int = 0,
    cfg_key: str | None = "cfg",
    half: bool = False,
) -> nn.Module:
    """A fair-esm ESM-2 `.pt` laid out like esm2_t36_3B_UR50D.pt; returns the fair-esm module.

    {"cfg": {"model": argparse.Namespace}, "model": {...}} with the trunk under
    "encoder.sentence_encoder.", the LM head under "encoder.", and no contact regression
    (released as a separate *-contact-regression.pt). cfg_key "args" writes the older
    {"args": Namespace} layout, None no configuration at all. half stores float16 tensors
    (as the releases do) and rounds the returned module's weights the same way.
    """
    model = _random_fair_esm(num_layers, embed_dim, heads, seed)
    if half:
        model.half().float()
    args = argparse.Namespace(
        arch="esm2",
        encoder_layers=num_layers,
        encoder_embed_dim=embed_dim,
        encoder_ffn_embed_dim=4 * embed_dim,
        encoder_attention_heads=heads,
        token_dropout=True,
        max_positions=1024,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
    )
    weights = {
        ("encoder." if k.startswith("lm_head.") else "encoder.sentence_encoder.") + k: (
            v.half() if half else v
        )
        for k, v in model.state_dict().items()
        if not k.startswith("contact_head.")
    }
    configs = {"cfg": {"cfg": {"model": args}}, "args": {"args": args}, None: {}}
    torch.save({**configs[cfg_key], "model": weights}, path)
    return model


def write_hf_esm_dir(
    directory: str | Path,
    num_layers: int = 2,
    embed_dim: int = 64,
    heads: int = 4,
    seed: int = 0,
    masked_lm: bool = False,
    hub_layout: bool = False,
) -> nn.Module:
    """A transformers ESM-2 directory (save_pretrained, safetensors); returns the EsmModel.

    masked_lm saves EsmForMaskedLM (keys under "esm." plus lm_head). transformers 5 writes
    LayerNorm gamma/beta and one shared rotary key; hub_layout rewrites the file the way
    transformers 4 wrote the facebook/esm2_* repositories: weight/bias, inv_freq per layer.
    """
    from transformers import EsmConfig, EsmForMaskedLM, EsmModel

    config = EsmConfig(
        vocab_size=33,
        hidden_size=embed_dim,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        intermediate_size=4 * embed_dim,
        position_embedding_type="rotary",
        token_dropout=True,
        emb_layer_norm_before=False,
        layer_norm_eps=1e-5,
        pad_token_id=1,
        mask_token_id=32,
        max_position_embeddings=1026,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(seed)
    model = EsmForMaskedLM(config) if masked_lm else EsmModel(config)
    _randomize_layer_norms(model)
    model.save_pretrained(directory)
    if hub_layout:
        file = Path(directory) / "model.safetensors"
        state = {}
        for key, value in load_file(file).items():
            key = key.replace("LayerNorm.gamma", "LayerNorm.weight")
            key = key.replace("LayerNorm.beta", "LayerNorm.bias")
            for i in range(num_layers) if ".layer.*." in key else [None]:
                state[key if i is None else key.replace("*", str(i))] = value.clone()
        save_file(state, file, metadata={"format": "pt"})
    return (model.esm if masked_lm else model).eval()


@contextlib.contextmanager
def _class_in_main(cls: type) -> Iterator[None]:
    """Make `__main__.<name>` resolve to cls while pickling, as in VirNucPro's training script."""
    main = sys.modules["__main__"]
    previous = main.__dict__.get(cls.__name__)
    setattr(main, cls.__name__, cls)
    try:
        yield
    finally:
        if previous is None:
            delattr(main, cls.__name__)
        else:
            setattr(main, cls.__name__, previous)


class MLPClassifier(nn.Module):
    """VirNucPro's training-script class (forward returns logits; softmax came afterwards)."""

    def __init__(self, input_dim: int, hidden_dim: int, num_class: int):
        super().__init__()
        self.hidden_layer = nn.Linear(input_dim, hidden_dim)
        self.bn1 = nn.BatchNorm1d(hidden_dim)
        self.output_layer = nn.Linear(hidden_dim, num_class)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_layer(self.dropout(torch.relu(self.bn1(self.hidden_layer(x)))))


MLPClassifier.__module__ = "__main__"


def write_virnucpro_classifier_pth(
    path: str | Path,
    input_dim: int = 3328,
    seed: int = 0,
    hidden_dim: int = 512,
    relu_module: bool = False,
) -> nn.Module:
    """`torch.save(whole_module)` of a `__main__.MLPClassifier`, as in 300_model.pth.

    relu_module also registers an (unused) nn.ReLU submodule, as variants of the script do.
    """
    torch.manual_seed(seed)
    model = MLPClassifier(input_dim, hidden_dim, 2)
    if relu_module:
        model.relu = nn.ReLU()
    with torch.no_grad():
        model.bn1.weight.normal_(1.0, 0.3)
        model.bn1.bias.normal_(0.0, 0.3)
        model.bn1.running_mean.normal_(0.0, 0.5)
        model.bn1.running_var.uniform_(0.5, 2.0)
        model.bn1.num_batches_tracked.fill_(1234)
    model.eval()
    with _class_in_main(MLPClassifier):
        torch.save(model, path)
    return model


class _Payload:
    """Unpickling this runs a shell command or `exec`: what a hostile checkpoint would do."""

    def __init__(self, marker: Path, via: str):
        self.marker, self.via = marker, via

    def __reduce__(self) -> tuple:
        if self.via == "system":
            return os.system, (f"touch {shlex.quote(str(self.marker))}",)
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def write_malicious_pth(
    path: str | Path, marker: str | Path | None = None, via: str = "system"
) -> Path:
    """A torch zip checkpoint whose unpickling would create `marker` (via os.system or exec).

    Returns the marker path; a safe loader must refuse the file and the marker must not appear.
    """
    path = Path(path)
    marker = Path(marker) if marker is not None else path.with_name(path.name + ".pwned")
    torch.save({"hidden_layer.weight": torch.zeros(2, 2), "trap": _Payload(marker, via)}, path)
    return marker


def classifier_dim(repository: Path) -> int:
    config = text_format.Parse(
        (repository / "classifier_300" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    return config.input[0].dims[0]
