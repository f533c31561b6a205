"""Write the JSON Schema of KServe's v1beta1 InferenceService that
tests/unit/test_deploy_files.py uses.

KServe's CRD is over 1 MB because every embedded Pod and Container type is spelt out in full.
This keeps KServe's own types only, read from the OpenAPI model classes of KServe's Python
SDK (generated from the same Go types as the CRD), and points every Kubernetes type at the
definitions that `kubernetes-validate` ships. Objects reject unknown fields, as the API server
does with strict field validation. Regenerate after a KServe upgrade:

    pip download --no-deps kserve==0.21.0 && unzip -q kserve-0.21.0-py3-none-any.whl -d sdk
    K8S=$(echo .venv-tools/lib/python3.*/site-packages/kubernetes_validate/kubernetes-json-schema)
    python tests/schemas/kserve_schema.py sdk/kserve/models \\
        $K8S/v1.37.0-local-strict/_definitions.json \\
        > tests/schemas/kserve-inferenceservice-v1beta1.json
"""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

K8S = "https://kubernetes.io/api/_definitions.json#/$defs/"
QUANTITY = "io.k8s.apimachinery.pkg.api.resource.Quantity"
# KServe Go types that are Quantities under another name; the SDK has no class for them.
QUANTITY_ALIASES = {"V1beta1MetricQuantity"}
SCALARS = {
    "str": {"type": "string"},
    "int": {"type": "integer"},
    "float": {"type": "number"},
    "bool": {"type": "boolean"},
    "object": {},
}
# +required in KServe's Go types but optional in the SDK.
EXTRA_REQUIRED = {"V1beta1ModelFormat": ["name"]}


def class_dicts(source: str) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """openapi_types, attribute_map and the required attributes of one SDK model module."""
    found: dict[str, dict[str, str]] = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in ("openapi_types", "attribute_map"):
                found[node.targets[0].id] = ast.literal_eval(node.value)
    required = re.findall(r"Invalid value for `(\w+)`, must not be `None`", source)
    return found["openapi_types"], found["attribute_map"], required


class Builder:
    def __init__(self, models: Path, k8s_defs: dict[str, dict]) -> None:
        self.k8s_defs = k8s_defs
        # class name -> module source (module names do not follow class names for acronyms)
        self.sources = {
            m.group(1): path.read_text()
            for path in models.glob("*.py")
            if (m := re.search(r"^class (\w+)\(object\):", path.read_text(), re.M))
        }
        self.defs: dict[str, dict] = {}

    def type_schema(self, sdk_type: str) -> dict:
        if sdk_type in SCALARS:
            return dict(SCALARS[sdk_type])
        if m := re.fullmatch(r"list\[(.+)\]", sdk_type):
            return {"type": "array", "items": self.type_schema(m.group(1))}
        if m := re.fullmatch(r"dict\(str, (.+)\)", sdk_type):
            return {"type": "object", "additionalProperties": self.type_schema(m.group(1))}
        if sdk_type in QUANTITY_ALIASES:
            return {"$ref": K8S + QUANTITY}
        if re.match(r"V1(alpha|beta)\d", sdk_type):
            self.add(sdk_type)
            return {"$ref": f"#/$defs/{sdk_type}"}
        return {"$ref": K8S + self.k8s_name(sdk_type)}

    def k8s_name(self, sdk_type: str) -> str:
        """The Kubernetes definition of an SDK class: V1Probe, K8sIoApiAppsV1DeploymentStrategy."""
        if sdk_type == "ResourceQuantity":
            return QUANTITY
        if m := re.fullmatch(r"K8sIoApi([A-Z][a-z]+)(V\d\w*?)([A-Z]\w+)", sdk_type):
            candidates = [f"io.k8s.api.{m[1].lower()}.{m[2].lower()}.{m[3]}"]
        elif m := re.fullmatch(r"(V\d(?:(?:alpha|beta)\d)?)([A-Z]\w+)", sdk_type):
            version, kind = m[1].lower(), m[2]
            candidates = [
                f"io.k8s.api.core.{version}.{kind}",
                f"io.k8s.apimachinery.pkg.apis.meta.{version}.{kind}",
                f"io.k8s.api.autoscaling.{version}.{kind}",
            ]
        else:
            candidates = []
        for name in candidates:
            if name in self.k8s_defs:
                return name
        raise ValueError(f"no Kubernetes definition for SDK type {sdk_type}: {candidates}")

    def add(self, cls: str) -> None:
        if cls in self.defs:
            return
        self.defs[cls] = {}  # placeholder: types can refer to themselves
        types, names, required = class_dicts(self.sources[cls])
        schema = {
            "type": "object",
            "properties": {names[attr]: self.type_schema(t) for attr, t in types.items()},
            "additionalProperties": False,
        }
        needed = [names[a] for a in required] + EXTRA_REQUIRED.get(cls, [])
        if needed:
            schema["required"] = needed
        self.defs[cls] = schema


def build(models: Path, k8s_defs: dict[str, dict]) -> dict:
    builder = Builder(models, k8s_defs)
    builder.add("V1beta1InferenceServiceSpec")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "urn:virnucpro:kserve:v1beta1:InferenceService",
        "description": "KServe v1beta1 InferenceService (status omitted), from KServe's Python "
        "SDK; Apache-2.0. Regenerate with tests/schemas/kserve_schema.py.",
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "serving.kserve.io/v1beta1"},
            "kind": {"const": "InferenceService"},
            "metadata": {"$ref": K8S + builder.k8s_name("V1ObjectMeta")},
            "spec": {"$ref": "#/$defs/V1beta1InferenceServiceSpec"},
            "status": {"type": "object"},
        },
        "additionalProperties": False,
        "$defs": dict(sorted(builder.defs.items())),
    }


if __name__ == "__main__":
    k8s_defs = json.loads(Path(sys.argv[2]).read_text())["$defs"]
    json.dump(build(Path(sys.argv[1]), k8s_defs), sys.stdout, indent=1)
    sys.stdout.write("\n")
