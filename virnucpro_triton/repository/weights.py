"""Weights on disk: an entry's files (write_entry), the model they rebuild (load_model), its
architecture.json and the provenance its config records."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from virnucpro_triton.repository.config import model_py
from virnucpro_triton.repository.spec import (
    ARCHITECTURE,
    DNABERT_S,
    ESM2,
    MODEL_PY,
    TORCH,
    WEIGHTS,
    onnx_name,
    spec_of,
)

if TYPE_CHECKING:
    # torch is imported where weights are handled, protobuf where configs are written: the
    # client and the pipeline's stubs (which import this package) never pay for them.
    import torch
    from tritonclient.grpc import model_config_pb2


@dataclass(frozen=True)
class Source:
    """The checkpoint an entry's weights came from, as the entry's config records it."""

    name: str  # its file (or directory) name
    sha256: str = ""
    random_weights: bool = False

    @classmethod
    def of(cls, path: Path) -> Source:
        """A file's sha256; a directory's is that of `LC_ALL=C sha256sum *` run in it (its
        files in name order), so a user can check either with sha256sum."""
        path = Path(path)
        if path.is_file():
            return cls(path.name, sha256_of(path))
        listing = "".join(
            f"{sha256_of(f)}  {f.name}\n"
            for f in sorted(path.iterdir(), key=lambda f: f.name.encode())
            if f.is_file() and not f.name.startswith(".")
        )
        return cls(path.name, hashlib.sha256(listing.encode()).hexdigest())


# Written by `export --tiny` and the benchmark: the demo's verdicts mean nothing.
TINY_SOURCE = Source("tiny demo model", random_weights=True)
BENCH_SOURCE = Source("benchmark model", random_weights=True)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


# Provenance parameters that are not text: Triton's config parameters are strings, run.json
# gives them their JSON types (provenance_values).
_TYPED_PROVENANCE = {
    "weights_sha256": json.loads,
    "random_weights": {"true": True, "false": False}.__getitem__,
    "batch_invariant": {"true": True, "false": False}.__getitem__,
}


def provenance_values(parameters: dict[str, str]) -> dict[str, Any]:
    """An entry's provenance parameters in their JSON types: `random_weights` and
    `batch_invariant` booleans, `weights_sha256` an object; a value that does not decode is left
    as its text."""
    values: dict[str, Any] = dict(parameters)
    for key, decode in _TYPED_PROVENANCE.items():
        if key in values:
            with contextlib.suppress(KeyError, ValueError):
                values[key] = decode(values[key])
    return values


def _provenance(version: Path, source: Source | None, dtype: str | None) -> dict[str, str]:
    try:
        found = {"virnucpro_triton_version": metadata.version("virnucpro-triton")}
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        found = {"virnucpro_triton_version": "unknown"}
    if source is not None:
        weights = {
            f.name: sha256_of(f)
            for f in sorted(version.iterdir())
            if f.is_file() and f.name not in (MODEL_PY, ARCHITECTURE)
        }
        found |= {
            "source": source.name,
            "source_sha256": source.sha256,
            "weights_sha256": json.dumps(weights, sort_keys=True),
            "random_weights": str(source.random_weights).lower(),
        }
    if dtype is not None:
        found["dtype"] = dtype
    return found


def write_entry(
    repository: Path,
    config: model_config_pb2.ModelConfig,
    model: torch.nn.Module | None = None,
    architecture: dict[str, Any] | None = None,
    files: tuple[Path, ...] = (),
    source: Source | None = None,
) -> Path:
    """Write one entry: 1/model.py (Python backend, made from the entry's spec), the weights
    when a model is given, architecture.json when one is given, copies of `files` into 1/, and
    config.pbtxt with the entry's provenance (PROVENANCE; `source` names the weights' origin,
    whose files in 1/ it hashes: those already there too, e.g. an ONNX graph)."""

    entry = repository / config.name
    version = entry / "1"
    version.mkdir(parents=True, exist_ok=True)
    if config.backend == "python":
        (version / MODEL_PY).write_text(model_py(spec_of(config.name)))
    if model is not None:
        from safetensors.torch import save_file

        # Parameters take the entry's dtype; buffers keep theirs (ESM-2's rotary frequencies stay
        # fp32: rounded to bf16 they would shift the angles of far positions).
        dtype = torch_dtype(architecture["dtype"])
        parameters = {name for name, _ in model.named_parameters()}
        state = {
            k: (v.to(dtype) if k in parameters and v.is_floating_point() else v)
            .detach()
            .cpu()
            .contiguous()
            for k, v in model.state_dict().items()
        }
        save_file(state, str(version / WEIGHTS))
    if architecture is not None:
        (version / ARCHITECTURE).write_text(json.dumps(architecture, indent=2) + "\n")
    for path in files:
        shutil.copyfile(path, version / path.name)
    dtype_name = architecture["dtype"] if architecture else None
    for key, value in _provenance(version, source, dtype_name).items():
        config.parameters[key].string_value = value
    write_config(entry, config)
    return entry


def write_config(entry: Path, config: model_config_pb2.ModelConfig) -> None:
    from google.protobuf import text_format

    (entry / "config.pbtxt").write_text(text_format.MessageToString(config))


def torch_dtype(name: str) -> torch.dtype:
    """fp32, bf16 or fp16 as a torch dtype."""
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def architecture_of(
    kind: str, model: torch.nn.Module, dtype: str, runtime: str = TORCH
) -> dict[str, Any]:
    """What `load_model` needs to rebuild `model`: its kind, hyperparameters and dtype; and
    where it runs (an ONNX-format Python entry keeps the description but no weights)."""
    if kind == "classifier":
        config = {
            "input_dim": model.hidden_layer.in_features,
            "hidden_dim": model.hidden_layer.out_features,
        }
    else:
        config = dataclasses.asdict(model.config)
    return {"kind": kind, "config": config, "dtype": dtype, "runtime": runtime}


def read_architecture(version_dir: Path) -> dict[str, Any]:
    """The entry's architecture.json, once every file the entry loads is known readable (the
    first thing a served entry reads)."""
    require_readable(version_dir)
    return json.loads((version_dir / ARCHITECTURE).read_text())


def require_readable(version_dir: Path) -> None:
    """Name an unreadable file: safetensors reports one as FileNotFoundError."""
    for path in sorted(version_dir.iterdir()):
        if path.is_file() and not os.access(path, os.R_OK):
            mode = path.stat().st_mode & 0o777
            raise PermissionError(
                f"{path}: permission denied (mode {mode:04o}, this process is uid {os.getuid()}); "
                "re-export the repository, or make it readable: chmod -R a+rX REPOSITORY"
            )


def load_model(
    version_dir: Path, device: torch.device | str = "cpu"
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild an entry's model on `device` from its architecture.json and safetensors weights.

    The module is built on the meta device and takes the file's tensors as they are: no random
    initialization and no fp32 copy of a 3B model in host memory, which also makes loading
    faster (docs/performance.md).
    """
    import torch
    from safetensors.torch import load_file

    from virnucpro_triton.models.dnabert_s import DnabertConfig, DnabertS
    from virnucpro_triton.models.esm2 import Esm2, Esm2Config
    from virnucpro_triton.models.mlp import MLPClassifier

    architecture = read_architecture(version_dir)
    if architecture["runtime"] != TORCH:
        raise ValueError(
            f"{version_dir}: no torch weights here, the model runs in an ONNX entry "
            f"({onnx_name(version_dir.parent.name)})"
        )
    kind, config = architecture["kind"], architecture["config"]
    with torch.device("meta"):
        if kind == DNABERT_S:
            model: torch.nn.Module = DnabertS(DnabertConfig(**config))
        elif kind == ESM2:
            model = Esm2(Esm2Config(**config))
        elif kind == "classifier":
            model = MLPClassifier(config["input_dim"], config["hidden_dim"])
        else:
            raise ValueError(f"{version_dir / ARCHITECTURE}: unknown model kind {kind!r}")
    state = load_file(str(version_dir / WEIGHTS), device=str(torch.device(device)))
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(torch_dtype(architecture["dtype"])).eval(), architecture
