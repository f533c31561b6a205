"""Loaders for the real on-disk checkpoint formats (local paths only).

Pickles are read with `torch.load(weights_only=True)`: only tensors, plain containers and the
few class names each format needs are allowed, and those names map onto inert records here,
so no code from a checkpoint ever runs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer
from torch import nn

from virnucpro_triton.errors import VirnucproError
from virnucpro_triton.models.dnabert_s import DnabertConfig, DnabertS
from virnucpro_triton.models.esm2 import (
    MASK_IDX,
    PAD_IDX,
    PROTEIN_ALPHABET,
    Esm2,
    Esm2Config,
    infer_esm2_heads,
)
from virnucpro_triton.models.mlp import MLPClassifier

StateDict = dict[str, torch.Tensor]
M = TypeVar("M", bound=nn.Module)


class CheckpointError(VirnucproError):
    """A checkpoint file is missing, unreadable, unsafe or does not fit the model."""


class _Namespace:
    """Inert stand-in for `argparse.Namespace` in fair-esm checkpoints: holds attributes only."""


class _PickledModule:
    """Inert record of a pickled `nn.Module`: unpickling stores its `__dict__` and runs nothing."""

    state: dict[str, Any]

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.state = state


# Globals a whole-module VirNucPro classifier pickle needs beyond torch's tensor allowlist.
_CLASSIFIER_MODULE_GLOBALS = (
    "__main__.MLPClassifier",
    "torch.nn.modules.linear.Linear",
    "torch.nn.modules.batchnorm.BatchNorm1d",
    "torch.nn.modules.dropout.Dropout",
    "torch.nn.modules.activation.ReLU",
)


def _names(keys: Iterable[str], limit: int = 20) -> str:
    keys = sorted(keys)
    more = f" ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _torch_load(path: Path, allowed: Iterable[tuple[type, str]] = ()) -> Any:
    """torch.load(weights_only=True) with `allowed` (stand-in, "module.Name") pairs allowlisted."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch wraps the unpickler's reason in advice to turn weights_only off: keep the reason.
        found = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\n\n|$)", str(e), re.S)
        reason = found.group(1).strip() if found else str(e)
        refused = re.search(r"GLOBAL ([\w.]+)", reason)
        if refused:
            # torch's message drops the "builtins." of builtins such as exec; put it back.
            name = refused.group(1) if "." in refused.group(1) else f"builtins.{refused.group(1)}"
            raise CheckpointError(
                f"{path}: refused to unpickle global {name} "
                "(only tensors and known layer records may be loaded)"
            ) from None
        raise CheckpointError(f"{path}: cannot read as a torch checkpoint: {reason}") from None
    except Exception as e:  # torch.load raises many types for damaged or foreign files
        raise CheckpointError(
            f"{path}: cannot read as a torch checkpoint: {type(e).__name__}: {e}"
        ) from e


def _read_state_dict(path: Path) -> StateDict:
    """A flat tensor dict from a `.safetensors` file or a pickled state dict."""
    if path.suffix == ".safetensors":
        try:
            return load_file(path)
        except Exception as e:
            raise CheckpointError(f"{path}: cannot read safetensors: {e}") from e
    return _check_tensors(_torch_load(path), path)


def _check_tensors(obj: Any, path: Path) -> StateDict:
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    bad = [str(k) for k, v in obj.items() if not (isinstance(k, str) and torch.is_tensor(v))]
    if bad:
        raise CheckpointError(f"{path}: entries that are not named tensors: {_names(bad)}")
    return obj


def _load_strict(make: Callable[[], M], state: StateDict, path: Path) -> M:
    """The model holding the checkpoint's tensors as float32, or one error listing every missing,
    unexpected and mis-shaped key. Built on the meta device: no time spent on random init."""
    with torch.device("meta"):
        model = make()
    expected = model.state_dict()
    problems = []
    if missing := expected.keys() - state.keys():
        problems.append(f"missing keys: {_names(missing)}")
    if unexpected := state.keys() - expected.keys():
        problems.append(f"unexpected keys: {_names(unexpected)}")
    shapes = [
        f"{k} {tuple(state[k].shape)} (model {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if shapes:
        problems.append(f"shape mismatches: {_names(shapes)}")
    if problems:
        raise CheckpointError(
            f"{path}: does not fit {type(model).__name__}: " + "; ".join(problems)
        )
    model.load_state_dict(state, assign=True)
    return model.float()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read config: {e}") from e
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {_json_type(config)}")
    return config


def _json_type(value: Any) -> str:
    names = {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "an array",
    }
    return names.get(type(value), "null")  # a JSON value that is not an object


# What each kind of config value must be, and how a refusal says it.
_KINDS: dict[type, tuple[Callable[[Any], bool], str]] = {
    int: (lambda v: type(v) is int and v >= 1, "a whole number >= 1"),
    float: (
        lambda v: type(v) in (int, float) and math.isfinite(v) and v > 0,
        "a finite number > 0",
    ),
    bool: (lambda v: type(v) is bool, "true or false"),
}


def _config_values(
    path: Path, config: dict[str, Any], kinds: dict[str, type], required: Iterable[str] = ()
) -> dict[str, Any]:
    """The entries of `config` named in `kinds` (those present), each of its kind (int: a
    whole number >= 1, float: a finite number > 0, bool); one line naming the first that is
    not, or a `required` one that is absent."""
    if absent := [key for key in required if key not in config]:
        raise CheckpointError(f"{path}: missing {', '.join(map(repr, absent))}")
    values = {key: config[key] for key in kinds if key in config}
    for key, value in values.items():
        valid, words = _KINDS[kinds[key]]
        if not valid(value):
            raise CheckpointError(
                f"{path}: {key} must be {words}, not {json.dumps(value, default=repr)[:40]}"
            )
    return values


def _check_sizes(path: Path, weights: Path, sizes: dict[str, tuple[int, int | None]]) -> None:
    """Sizes a config declares ({key: (declared, held by the weights or None)}) against its
    weights, before any model is built: one of a huge declared size would take minutes and
    gigabytes to build only to fail the strict check."""
    wrong = [
        f"{key}={declared} but the weights hold {held}"
        for key, (declared, held) in sizes.items()
        if held is not None and declared != held
    ]
    if wrong:
        raise CheckpointError(f"{path}: does not fit {weights}: {'; '.join(wrong)}")


def _check_heads(path: Path, key: str, heads: int, width: int) -> None:
    if width % heads:
        raise CheckpointError(f"{path}: {key}={heads} does not divide the width {width}")


def _weights_file(directory: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (directory / name).is_file():
            return directory / name
    raise CheckpointError(f"{directory}: neither model.safetensors nor pytorch_model.bin found")


def load_dnabert_s(directory: str | Path) -> tuple[DnabertS, DnabertConfig, Path]:
    """DNABERT-S (or DNABERT-2) from a Hugging Face model directory; returns the tokenizer path."""
    directory = Path(directory)
    config_path = directory / "config.json"
    kinds = {f.name: type(f.default) for f in dataclasses.fields(DnabertConfig)}
    # Keys of config.json that DnabertConfig has no field for are not read.
    config = DnabertConfig(**_config_values(config_path, _read_json(config_path), kinds))
    _check_heads(config_path, "num_attention_heads", config.num_attention_heads, config.hidden_size)
    weights = _weights_file(directory)
    # DNABERT-2 stores the encoder under "bert." next to an MLM head ("cls."); the pooler is unused.
    state = {k.removeprefix("bert."): v for k, v in _read_state_dict(weights).items()}
    state = {k: v for k, v in state.items() if not k.startswith(("pooler.", "cls."))}
    embedding = _shape(state, "embeddings.word_embeddings.weight")
    sizes = {
        "num_hidden_layers": (config.num_hidden_layers, _layer_count(state, "encoder.layer")),
        "vocab_size": (config.vocab_size, embedding[0]),
        "hidden_size": (config.hidden_size, embedding[1]),
    }
    _check_sizes(config_path, weights, sizes)
    model = _load_strict(lambda: DnabertS(config), state, weights)

    tokenizer_path = directory / "tokenizer.json"
    try:
        tokenizer = Tokenizer.from_file(str(tokenizer_path))
    except Exception as e:
        raise CheckpointError(f"{tokenizer_path}: cannot read tokenizer: {e}") from e
    if tokenizer.get_vocab_size() > config.vocab_size:
        raise CheckpointError(
            f"{tokenizer_path}: {tokenizer.get_vocab_size()} tokens but the model embeds only "
            f"{config.vocab_size}"
        )
    if absent := [t for t in ("[CLS]", "[SEP]", "[PAD]") if tokenizer.token_to_id(t) is None]:
        raise CheckpointError(f"{tokenizer_path}: special tokens not in vocabulary: {absent}")
    return model.eval(), config, tokenizer_path


def load_esm2(path: str | Path) -> tuple[Esm2, Esm2Config]:
    """ESM-2 from a fair-esm `.pt` file or a Hugging Face ESM directory."""
    path = Path(path)
    model, config = _load_hf_esm(path) if path.is_dir() else _load_fair_esm(path)
    return model.eval(), config


def _layer_count(state: StateDict, prefix: str = "layers") -> int:
    pattern = re.compile(rf"{re.escape(prefix)}\.(\d+)\.")
    indices = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    return max(indices) + 1 if indices else 0


def _shape(state: StateDict, key: str) -> tuple[int | None, int | None]:
    """The two sizes of a 2-D tensor of the weights, or None where they are not to be had (the
    strict check then names the key)."""
    tensor = state.get(key)
    return tuple(tensor.shape) if tensor is not None and tensor.ndim == 2 else (None, None)


def _load_fair_esm(path: Path) -> tuple[Esm2, Esm2Config]:
    data = _torch_load(path, [(_Namespace, "argparse.Namespace")])
    if not isinstance(data, dict) or "model" not in data:
        raise CheckpointError(f"{path}: not a fair-esm checkpoint (no 'model' entry)")
    cfg = data.get("cfg")
    args = cfg.get("model") if isinstance(cfg, dict) else data.get("args")
    # Same prefixes fair-esm strips; its contact regression and LM head are not used here.
    state = {
        re.sub(r"^encoder\.(sentence_encoder\.)?", "", k): v
        for k, v in _check_tensors(data["model"], path).items()
    }
    state = {k: v for k, v in state.items() if not k.startswith(("contact_head.", "lm_head."))}
    if "embed_tokens.weight" not in state:
        raise CheckpointError(f"{path}: missing keys: embed_tokens.weight")

    # cfg["model"] is an argparse.Namespace in the releases; accept a plain dict as well.
    arg = args.get if isinstance(args, dict) else lambda name: getattr(args, name, None)
    kinds = {"encoder_layers": int, "encoder_embed_dim": int, "encoder_attention_heads": int}
    declared = {name: arg(name) for name in kinds if arg(name) is not None}
    declared = _config_values(path, declared, kinds)
    num_layers = declared.get("encoder_layers") or _layer_count(state)
    embed_dim = declared.get("encoder_embed_dim") or state["embed_tokens.weight"].shape[1]
    heads = declared.get("encoder_attention_heads")
    if heads is None:
        try:
            heads = infer_esm2_heads(num_layers, embed_dim)
        except ValueError as e:
            raise CheckpointError(f"{path}: no attention head count in the file and {e}") from e
    config = Esm2Config(
        num_layers=num_layers,
        embed_dim=embed_dim,
        attention_heads=heads,
        token_dropout=arg("token_dropout") is not False,
    )
    _check_esm2_sizes(path, path, config, state, tuple(kinds))
    model = _load_strict(lambda: Esm2(config), state, path)
    return model, config


# transformers EsmModel key (without "esm.") -> Esm2 key
_HF_ESM_RENAMES = [
    (r"embeddings\.word_embeddings\.", "embed_tokens."),
    (r"encoder\.layer\.(\d+)\.attention\.self\.query\.", r"layers.\1.self_attn.q_proj."),
    (r"encoder\.layer\.(\d+)\.attention\.self\.key\.", r"layers.\1.self_attn.k_proj."),
    (r"encoder\.layer\.(\d+)\.attention\.self\.value\.", r"layers.\1.self_attn.v_proj."),
    (
        r"encoder\.layer\.(\d+)\.attention\.self\.rotary_embeddings\.inv_freq$",
        r"layers.\1.self_attn.rot_emb.inv_freq",
    ),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"layers.\1.self_attn.out_proj."),
    (r"encoder\.layer\.(\d+)\.attention\.LayerNorm\.", r"layers.\1.self_attn_layer_norm."),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.", r"layers.\1.fc1."),
    (r"encoder\.layer\.(\d+)\.output\.dense\.", r"layers.\1.fc2."),
    (r"encoder\.layer\.(\d+)\.LayerNorm\.", r"layers.\1.final_layer_norm."),
    (r"encoder\.emb_layer_norm_after\.", "emb_layer_norm_after."),
]


# transformers >= 5 keeps one rotary frequency vector for all layers (older versions one per
# layer); its save_pretrained writes it under the literal pattern key.
_HF_SHARED_INV_FREQ = (
    "rotary_embeddings.inv_freq",
    "encoder.layer.*.attention.self.rotary_embeddings.inv_freq",
)


def _hf_esm_key(key: str) -> str:
    # transformers >= 5 saves LayerNorm parameters under the legacy BERT names gamma/beta.
    key = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", key)
    key = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key)
    for pattern, replacement in _HF_ESM_RENAMES:
        renamed, n = re.subn("^" + pattern, replacement, key)
        if n:
            return renamed
    return key  # left as is, so the strict check reports it under its own name


def _load_hf_esm(directory: Path) -> tuple[Esm2, Esm2Config]:
    config_path = directory / "config.json"
    hf = _read_json(config_path)
    if hf.get("position_embedding_type") != "rotary" or hf.get("emb_layer_norm_before"):
        raise CheckpointError(
            f"{config_path}: not an ESM-2 config (needs rotary positions, no emb_layer_norm_before)"
        )
    names = {
        "num_hidden_layers": ("num_layers", int),
        "hidden_size": ("embed_dim", int),
        "num_attention_heads": ("attention_heads", int),
        "layer_norm_eps": ("layer_norm_eps", float),
        "token_dropout": ("token_dropout", bool),
    }
    kinds = {key: kind for key, (_, kind) in names.items()}
    values = _config_values(config_path, hf, kinds, required=list(names)[:4])
    config = Esm2Config(**{names[key][0]: value for key, value in values.items()})
    fixed = {
        "vocab_size": len(PROTEIN_ALPHABET),
        "intermediate_size": 4 * config.embed_dim,
        "pad_token_id": PAD_IDX,
        "mask_token_id": MASK_IDX,
    }
    if wrong := [f"{k}={hf[k]} (expected {v})" for k, v in fixed.items() if hf.get(k, v) != v]:
        raise CheckpointError(f"{config_path}: unsupported values: {', '.join(wrong)}")

    weights = _weights_file(directory)
    state = {k.removeprefix("esm."): v for k, v in _read_state_dict(weights).items()}
    unused = ("lm_head.", "contact_head.", "pooler.", "embeddings.position_ids")
    state = {_hf_esm_key(k): v for k, v in state.items() if not k.startswith(unused)}
    shared = [state.pop(k) for k in _HF_SHARED_INV_FREQ if k in state]
    _check_esm2_sizes(config_path, weights, config, state, tuple(names)[:3])
    if shared:
        for i in range(config.num_layers):
            state.setdefault(f"layers.{i}.self_attn.rot_emb.inv_freq", shared[0])
    model = _load_strict(lambda: Esm2(config), state, weights)
    return model, config


def _check_esm2_sizes(
    path: Path, weights: Path, config: Esm2Config, state: StateDict, keys: tuple[str, str, str]
) -> None:
    """`keys`: the config's names of the layer count, the width and the head count."""
    layers, width, heads = keys
    _check_heads(path, heads, config.attention_heads, config.embed_dim)
    sizes = {
        layers: (config.num_layers, _layer_count(state)),
        width: (config.embed_dim, _shape(state, "embed_tokens.weight")[1]),
    }
    _check_sizes(path, weights, sizes)


def _record_part(state: Any, key: str, path: Path, where: str) -> dict[str, Any]:
    """`state[key]` of a module record, checked to be a dict with string keys (or absent)."""
    part = state.get(key, {})
    if not isinstance(part, dict) or not all(isinstance(k, str) for k in part):
        raise CheckpointError(f"{path}: malformed module record {where}: {key} is not a dict")
    return part


def _module_state(record: _PickledModule, path: Path, prefix: str = "") -> StateDict:
    """The state dict a pickled nn.Module would give: parameters, persistent buffers, children.

    The record comes from an untrusted file: anything but the layout torch writes is refused."""
    where = prefix.rstrip(".") or "(top level)"
    state = getattr(record, "state", None)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: malformed module record {where}: no attribute dict")
    out: StateDict = {}
    tensors = {
        **_record_part(state, "_parameters", path, where),
        **{
            name: buf
            for name, buf in _record_part(state, "_buffers", path, where).items()
            if name not in state.get("_non_persistent_buffers_set", ())
        },
    }
    for name, tensor in tensors.items():
        if tensor is None:
            continue
        if not torch.is_tensor(tensor):
            raise CheckpointError(
                f"{path}: malformed module record {where}: {name} is a "
                f"{type(tensor).__name__}, not a tensor"
            )
        out[prefix + name] = tensor.detach()
    for name, child in _record_part(state, "_modules", path, where).items():
        if child is None:
            continue
        if not isinstance(child, _PickledModule):
            raise CheckpointError(f"{path}: submodule {prefix}{name} is not a pickled module")
        out.update(_module_state(child, path, f"{prefix}{name}."))
    return out


def load_classifier(path: str | Path) -> MLPClassifier:
    """VirNucPro's MLP from a whole pickled module (300_model.pth), a state dict or safetensors."""
    path = Path(path)
    if path.suffix == ".safetensors":
        state = _read_state_dict(path)
    else:
        obj = _torch_load(path, [(_PickledModule, name) for name in _CLASSIFIER_MODULE_GLOBALS])
        state = _check_tensors(
            _module_state(obj, path) if isinstance(obj, _PickledModule) else obj, path
        )
    hidden, output = state.get("hidden_layer.weight"), state.get("output_layer.weight")
    if hidden is None or output is None or hidden.ndim != 2 or output.ndim != 2:
        raise CheckpointError(
            f"{path}: needs 2-D hidden_layer.weight and output_layer.weight; keys: {_names(state)}"
        )
    input_dim, hidden_dim, num_class = hidden.shape[1], hidden.shape[0], output.shape[0]
    model = _load_strict(lambda: MLPClassifier(input_dim, hidden_dim, num_class), state, path)
    return model.eval()
