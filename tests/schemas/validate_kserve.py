"""Validate KServe InferenceService manifests against kserve-inferenceservice-v1beta1.json.

Runs in .venv-tools (it needs jsonschema and kubernetes-validate's Kubernetes definitions,
which the KServe schema refers to):

    .venv-tools/bin/python tests/schemas/validate_kserve.py FILE.yaml...

Prints one line per error and exits with 1 when there is any.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml
from referencing import Registry, Resource

SCHEMA = Path(__file__).with_name("kserve-inferenceservice-v1beta1.json")
# The Kubernetes version whose definitions KServe 0.21's types need (k8s 1.36 added some).
KUBERNETES = "v1.37.0-local-strict"


def validator() -> jsonschema.Draft202012Validator:
    schemas = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    definitions = json.loads((schemas / KUBERNETES / "_definitions.json").read_text())
    registry = Registry().with_resource(definitions["$id"], Resource.from_contents(definitions))
    return jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()), registry=registry)


def main(paths: list[str]) -> int:
    check = validator()
    errors = 0
    for path in paths:
        for document in yaml.safe_load_all(Path(path).read_text()):
            for error in check.iter_errors(document):
                location = ".".join(str(p) for p in error.absolute_path) or "(document)"
                print(f"{path}: {location}: {error.message}")
                errors += 1
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
