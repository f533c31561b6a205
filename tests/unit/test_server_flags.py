"""The deployment files run the embedded server's flags."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from virnucpro_triton import repository as repo

ROOT = Path(__file__).resolve().parents[2]


def test_deployment_files_run_the_embedded_servers_flags():
    """The Dockerfile's CMD, compose, Kubernetes and KServe args: the same server flags."""
    flags = set(repo.SERVER_FLAGS)
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", dockerfile.replace("\\\n", ""), re.M).group(1))
    assert cmd[0] == "tritonserver" and flags <= set(cmd), cmd
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    command = compose["services"]["triton"].get("command")
    assert command is None or flags <= set(command)  # none: the image's CMD
    deployment = yaml.safe_load((ROOT / "docker" / "k8s" / "deployment.yaml").read_text())
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert flags <= set(container["args"]), container["args"]
    service = yaml.safe_load((ROOT / "docker" / "kserve" / "inferenceservice.yaml").read_text())
    assert flags <= set(service["spec"]["predictor"]["model"]["args"])
