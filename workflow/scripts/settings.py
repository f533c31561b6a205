"""The workflow's config and sample sheet, checked: each problem is one line naming the key, or
the sheet's line and column, and what is wrong."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import jsonschema
import yaml
from jobs import access_files

SCHEMAS = Path(__file__).parent.parent / "schemas"


class SettingsError(Exception):
    """A config key or a sample sheet row that cannot be run."""


def _first_error(instance, schema_name: str):
    schema = yaml.safe_load((SCHEMAS / schema_name).read_text())
    errors = jsonschema.Draft202012Validator(schema).iter_errors(instance)
    return jsonschema.exceptions.best_match(errors)


def _message(error) -> str:
    """jsonschema's message, or for a pattern the rule it stands for, in words."""
    if error.validator == "pattern" and "description" in error.schema:
        return f"{error.instance!r}: {error.schema['description']}"
    return error.message


def _with_defaults(config: dict) -> dict:
    """`config` with the schema's defaults filled in, top level and `predict`."""
    schema = yaml.safe_load((SCHEMAS / "config.schema.yaml").read_text())["properties"]
    filled = {key: config.get(key, spec["default"]) for key, spec in schema.items()}
    predict = schema["predict"]["properties"]
    given = filled["predict"]
    filled["predict"] = {key: given.get(key, spec["default"]) for key, spec in predict.items()}
    return filled


def check_config(config: dict) -> dict:
    """The config with defaults, or SettingsError naming the first bad key."""
    error = _first_error(config, "config.schema.yaml")
    if error is not None:
        key = ".".join(str(part) for part in error.absolute_path) or "(top level)"
        raise SettingsError(f"config {key}: {_message(error)}")
    config = _with_defaults(config)
    command = config["virnucpro_triton"]
    if shutil.which(command) is None:
        raise SettingsError(
            f"config virnucpro_triton: {command!r} is neither a command on PATH nor an "
            "executable file (e.g. .venv/bin/virnucpro-triton)"
        )
    if not (config["urls"] or config["urls_file"]):
        # The shared server asks for the token; predict starts a per_job one without any.
        if config["tls"]:
            raise SettingsError(
                "config tls: TLS is for the servers in urls or urls_file; the embedded server "
                "speaks plain text on 127.0.0.1"
            )
        if config["token_file"] and config["embedded"] == "per_job":
            raise SettingsError(
                "config token_file: the per_job servers that predict starts on 127.0.0.1 ask "
                "for no token; it is for the servers in urls or urls_file and the shared server"
            )
    for key, path in access_files(config).items():
        if problem := unreadable(path):
            raise SettingsError(f"config {key}: {problem}")
    return config


def unreadable(path: str) -> str | None:
    """What keeps `path` from being read as a file, naming it; None when nothing does."""
    if not os.path.isfile(path):
        return f"{path} {'is not a file' if os.path.exists(path) else 'does not exist'}"
    if not os.access(path, os.R_OK):
        return f"{path}: permission denied"
    return None


def read_samples(sheet: Path, reserved: set[str]) -> dict[str, list[str]]:
    """{sample: [FASTA paths]} of the tab-separated sheet (columns `sample` and `fasta`, more
    allowed; `#` lines and blank lines skipped), in its order. Paths are relative to the
    directory snakemake runs in. `reserved` names are taken by the merged outputs."""
    try:
        lines = sheet.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise SettingsError(
            f"config samples: cannot read the sample sheet {sheet}: {error}"
        ) from None
    rows = [(n, line.split("\t")) for n, line in enumerate(lines, 1) if line.strip()]
    rows = [(n, fields) for n, fields in rows if not fields[0].startswith("#")]
    if not rows:
        raise SettingsError(f"{sheet}: empty: it needs a header line `sample<TAB>fasta` and rows")
    header_line, header = rows[0]
    header = [name.strip() for name in header]
    missing = [name for name in ("sample", "fasta") if name not in header]
    if missing:
        raise SettingsError(
            f"{sheet} line {header_line}: the header lacks the column(s) {', '.join(missing)} "
            "(columns are separated by tabs)"
        )
    samples: dict[str, list[str]] = {}
    first_line: dict[str, int] = {}
    for n, fields in rows[1:]:
        where = f"{sheet} line {n}"
        if len(fields) != len(header):
            raise SettingsError(
                f"{where}: {len(fields)} tab-separated column(s), the header has {len(header)}"
            )
        row = {name: value.strip() for name, value in zip(header, fields)}
        error = _first_error(row, "samples.schema.yaml")
        if error is not None:
            column = ".".join(str(part) for part in error.absolute_path)
            raise SettingsError(f"{where}: column {column}: {_message(error)}")
        name = row["sample"]
        if name in first_line:
            raise SettingsError(f"{where}: sample {name!r} is already on line {first_line[name]}")
        if name in reserved:
            raise SettingsError(
                f"{where}: sample {name!r}: the name is taken by the workflow's merged outputs "
                f"({', '.join(sorted(reserved))})"
            )
        paths = [path.strip() for path in row["fasta"].split(",")]
        for path in paths:
            if not path:
                raise SettingsError(f"{where}: sample {name!r}: an empty path in column fasta")
            if "{" in path or "}" in path:
                raise SettingsError(
                    f"{where}: sample {name!r}: {path}: Snakemake reads braces in a path as a "
                    "wildcard; rename the file (or link it) without them"
                )
            if problem := unreadable(path):
                raise SettingsError(f"{where}: sample {name!r}: {problem}")
        first_line[name] = n
        samples[name] = paths
    if not samples:
        raise SettingsError(f"{sheet}: no sample rows under the header")
    return samples
