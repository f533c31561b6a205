"""The deployment files' health paths and metrics exist on a real tritonserver."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

from servers import TRITON_OF_BASE

ROOT = Path(__file__).resolve().parents[2]


def test_health_paths_and_metrics_exist_on_triton(server):
    """The probe paths answer, the base image's Triton is the embedded one, and the metrics the
    autoscaler and the README name are exported per model."""
    for path in ("/v2/health/live", "/v2/health/ready"):
        with urllib.request.urlopen(f"http://{server.http_url}{path}", timeout=10) as response:
            assert response.status == 200
    with urllib.request.urlopen(f"http://{server.http_url}/v2", timeout=10) as response:
        assert json.load(response)["version"] == TRITON_OF_BASE
    url = f"http://127.0.0.1:{server.ports['metrics']}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        metrics = response.read().decode()
    readme = (ROOT / "README.md").read_text()
    named = set(re.findall(r"\bnv_inference_\w+", readme))
    assert {"nv_inference_queue_duration_us", "nv_inference_request_success"} <= named
    for name in named | {"nv_inference_queue_duration_us", "nv_inference_request_success"}:
        assert re.search(rf'^{name}{{[^}}]*\bmodel="esm2"', metrics, re.M), name
