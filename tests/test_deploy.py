"""Production deployment files (docker/): the Dockerfile, compose, Kubernetes and KServe
manifests checked by the same tools a reviewer would run, and `make serve` without an engine.

The checkers live in .venv-tools (`make tools`, a dependency of `make test`) because their
dependencies clash with .venv's pins. Each tool also runs once on a broken copy, so a tool
that stopped checking would fail here instead of passing everything.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
K8S = DOCKER / "k8s"
KSERVE = DOCKER / "kserve" / "inferenceservice.yaml"
ADAPTER = DOCKER / "monitoring" / "prometheus-adapter-values.yaml"
TOOLS = ROOT / ".venv-tools" / "bin"
BASE_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"
TRITON_OF_BASE = "2.51.0"  # the server inside BASE_IMAGE (NGC support matrix)
# Oldest and newest Kubernetes whose schemas kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.25.0", "1.37.0")
STARTUP_SECONDS = 600  # ESM-2 3B needs minutes to load


def run(*args: str | Path, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="module")
def tools() -> Path:
    names = ("checkov", "hadolint", "kubernetes-validate", "check-jsonschema", "yamllint", "python")
    missing = [n for n in names if not (TOOLS / n).exists()]
    if missing:
        pytest.fail(
            f"the deployment checkers are not installed in {TOOLS} (missing: "
            f"{', '.join(missing)}); run `make tools` (`make test` does it)"
        )
    return TOOLS


def load_all(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def resources() -> list[dict]:
    """The resources kustomization.yaml applies."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return [d for name in kustomization["resources"] for d in load_all(K8S / name)]


def manifests() -> dict[str, dict]:
    """The resources by kind, but the Services (there are two: `services()`)."""
    return {d["kind"]: d for d in resources() if d["kind"] != "Service"}


def services() -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in resources() if d["kind"] == "Service"}


def pod_spec() -> dict:
    return manifests()["Deployment"]["spec"]["template"]["spec"]


def container() -> dict:
    (triton,) = pod_spec()["containers"]
    return triton


# --- the tools -----------------------------------------------------------------------------


def test_hadolint_passes_the_dockerfile_and_catches_a_bad_one(tools, tmp_path):
    result = run(tools / "hadolint", "--format", "json", DOCKER / "Dockerfile")
    assert result.returncode == 0 and json.loads(result.stdout) == [], result.stdout
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get update && apt-get install -y curl\n")
    found = {f["code"] for f in json.loads(run(tools / "hadolint", "-f", "json", bad).stdout)}
    assert {"DL3006", "DL3008"} <= found  # untagged base image, unpinned apt package


def checkov(tools: Path, directory: Path) -> dict[str, dict]:
    # --skip-download: no request to the vendor's API, so it runs offline.
    result = run(
        tools / "checkov",
        "--directory",
        directory,
        "--framework",
        "dockerfile",
        "kubernetes",
        "--skip-download",
        "--compact",
        "--output",
        "json",
    )
    assert result.returncode in (0, 1), result.stderr[-3000:]
    reports = json.loads(result.stdout)
    return {r["check_type"]: r for r in (reports if isinstance(reports, list) else [reports])}


def test_checkov_passes_dockerfile_and_kubernetes_manifests(tools):
    reports = checkov(tools, DOCKER)
    assert set(reports) == {"dockerfile", "kubernetes"}
    for kind, report in reports.items():
        failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
        assert failed == [], f"{kind}: {failed}"
        assert report["summary"]["parsing_errors"] == 0
    # It looked at what matters: the Dockerfile's instructions and the Deployment's pod.
    passed = {
        (Path(c["file_path"]).name, c["check_id"])
        for report in reports.values()
        for c in report["results"]["passed_checks"]
    }
    assert ("Dockerfile", "CKV_DOCKER_2") in passed  # HEALTHCHECK
    assert ("Dockerfile", "CKV_DOCKER_3") in passed  # a non-root USER
    assert ("deployment.yaml", "CKV_K8S_22") in passed  # read-only root filesystem
    # Every skip carries its reason.
    skipped = reports["kubernetes"]["results"]["skipped_checks"]
    reasons = {c["check_id"]: c["check_result"].get("suppress_comment", "") for c in skipped}
    assert reasons and all(len(r) > 20 for r in reasons.values()), reasons


def test_checkov_catches_an_insecure_deployment(tools, tmp_path):
    deployment = manifests()["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    del pod["securityContext"], pod["containers"][0]["securityContext"]
    (tmp_path / "deployment.yaml").write_text(yaml.safe_dump(deployment))
    report = checkov(tools, tmp_path)["kubernetes"]
    failed = {c["check_id"] for c in report["results"]["failed_checks"]}
    assert {"CKV_K8S_20", "CKV_K8S_22", "CKV_K8S_23"} <= failed


def test_yamllint_passes_every_yaml_file(tools):
    result = run(tools / "yamllint", "--strict", "-c", ROOT / ".yamllint.yaml", DOCKER)
    assert result.returncode == 0, result.stdout
    assert len(list(DOCKER.rglob("*.yaml"))) >= 10  # it had something to read


def test_compose_file_matches_the_compose_spec(tools, tmp_path):
    schema = ("--builtin-schema", "vendor.compose-spec")
    result = run(tools / "check-jsonschema", *schema, DOCKER / "compose.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    bad = tmp_path / "compose.yaml"
    bad.write_text((DOCKER / "compose.yaml").read_text().replace("shm_size:", "shm-size:"))
    result = run(tools / "check-jsonschema", *schema, bad)
    assert result.returncode == 1 and "shm-size" in result.stdout


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_kubernetes_manifests_match_the_api_schemas(tools, version):
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = [K8S / name for name in kustomization["resources"]]
    result = run(tools / "kubernetes-validate", "--strict", "-k", version, *files)
    assert result.returncode == 0, result.stdout
    # A kind without a schema is only a warning there: require a pass line per resource.
    passed = re.findall(r"^INFO .* passed for resource (\S+)", result.stdout, re.M)
    assert len(passed) == len(resources()) and "WARN" not in result.stdout, result.stdout


def test_kubernetes_validate_catches_a_misspelt_field(tools, tmp_path):
    bad = tmp_path / "deployment.yaml"
    text = (K8S / "deployment.yaml").read_text()
    bad.write_text(text.replace("readinessProbe:", "readynessProbe:"))
    result = run(tools / "kubernetes-validate", "--strict", "-k", KUBERNETES_VERSIONS[-1], bad)
    assert result.returncode == 1 and "readynessProbe" in result.stdout


def test_kserve_inferenceservice_matches_the_crd_schema(tools, tmp_path):
    validate = ROOT / "tests" / "schemas" / "validate_kserve.py"
    result = run(tools / "python", validate, KSERVE)
    assert result.returncode == 0, result.stdout + result.stderr
    bad = tmp_path / "isvc.yaml"
    text = KSERVE.read_text().replace("storageUri:", "storageURI:")
    bad.write_text(text.replace('cpu: "8"', "cpu: [8]"))
    result = run(tools / "python", validate, bad)
    assert result.returncode == 1
    assert "'storageURI' was unexpected" in result.stdout and "limits.cpu" in result.stdout


# --- what the files say --------------------------------------------------------------------


def dockerfile_stages() -> list[list[str]]:
    """Instructions per stage, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (DOCKER / "Dockerfile").read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()[:1] not in ("", "#")]
    stages: list[list[str]] = []
    for line in lines:
        if line.startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return stages


def test_dockerfile_runtime_stage():
    builder, runtime = dockerfile_stages()
    assert builder[0] == f"FROM {BASE_IMAGE} AS builder" and runtime[0] == f"FROM {BASE_IMAGE}"
    # Nothing is installed in the final image: compilers, pip and caches stay in the builder.
    assert not [i for i in runtime if i.startswith(("RUN", "ADD"))], runtime
    assert "COPY --from=builder /opt/venv /opt/venv" in runtime
    env = next(i for i in runtime if i.startswith("ENV "))
    assert "PATH=/opt/venv/bin:${PATH}" in env  # the backend stub's python3 is the venv's
    (user,) = [i.split()[1] for i in runtime if i.startswith("USER ")]
    assert re.fullmatch(r"[1-9]\d*:\d+", user)  # numeric and not root
    (healthcheck,) = [i for i in runtime if i.startswith("HEALTHCHECK")]
    assert "/v2/health/ready" in healthcheck
    cmd = json.loads(runtime[-1].removeprefix("CMD "))
    assert cmd == ["tritonserver", "--model-repository=/models", "--model-control-mode=none"]
    # The builder checks that the pinned environment is complete and imports the models' code.
    assert any("pip check" in i for i in builder)
    assert any("pip uninstall --yes pip" in i for i in builder)


def test_docker_requirements_are_pinned_for_the_python_backend():
    text = (DOCKER / "requirements.txt").read_text()
    lines = [ln for ln in text.splitlines() if ln[:1] not in ("", "#")]
    pins = dict(re.fullmatch(r"([\w.-]+)(?:\[\w+\])?==([\w.+]+)", ln).groups() for ln in lines)
    assert len(pins) == len(lines)
    assert pins["numpy"].startswith("1.")  # numpy 2 empties the stub's output tensors
    assert pins["tritonclient"] == TRITON_OF_BASE
    assert {"torch", "tokenizers", "safetensors", "grpcio", "protobuf"} <= set(pins)
    # The build context holds only what the image needs.
    ignore = [ln for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln[:1] not in "#"]
    assert ignore[:4] == ["*", "!pyproject.toml", "!virnucpro_triton/", "!docker/requirements.txt"]


def test_compose_service():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    (service,) = compose["services"].values()
    (gpus,) = service["deploy"]["resources"]["reservations"]["devices"]
    assert gpus == {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}
    assert re.fullmatch(r"(\d+)gb", service["shm_size"]) and int(service["shm_size"][:-2]) >= 4
    published = [p.rsplit(":", 2)[1:] for p in service["ports"]]  # BIND:HOST:CONTAINER
    assert sorted(container for _, container in published) == ["8000", "8001", "8002"]
    assert all(host == container for host, container in published)
    (models,) = service["volumes"]
    assert models["target"] == "/models" and models["read_only"] is True
    assert "/v2/health/ready" in " ".join(service["healthcheck"]["test"])
    assert service["restart"] == "unless-stopped"
    assert service["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}


def test_deployment_serves_with_a_gpu_probes_and_metrics():
    deployment, triton = manifests()["Deployment"], container()
    ports = {p["name"]: p["containerPort"] for p in triton["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert triton["resources"]["limits"]["nvidia.com/gpu"] >= 1
    probes = {k: triton[k] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    paths = {k: (p["httpGet"]["path"], ports[p["httpGet"]["port"]]) for k, p in probes.items()}
    assert paths == {
        "startupProbe": ("/v2/health/ready", 8000),
        "livenessProbe": ("/v2/health/live", 8000),
        "readinessProbe": ("/v2/health/ready", 8000),
    }
    startup = probes["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= STARTUP_SECONDS
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == ports["metrics"]
    assert {"--model-repository=/models", "--model-control-mode=none"} <= set(triton["args"])
    assert re.fullmatch(r"[\w./-]+:\d[\w.-]*", triton["image"])  # a pinned tag, never latest


def test_deployment_is_locked_down():
    pod, triton = pod_spec(), container()
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] > 0
    assert pod["automountServiceAccountToken"] is False
    security = triton["securityContext"]
    assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
    assert security["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m for m in triton["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/dev/shm"]["name"]]["emptyDir"]["medium"] == "Memory"
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    models = mounts["/models"]
    assert models["readOnly"] is True
    claim = volumes[models["name"]]["persistentVolumeClaim"]["claimName"]
    assert claim == manifests()["PersistentVolumeClaim"]["metadata"]["name"]


def test_resources_select_the_deployment():
    resources = manifests()
    labels = resources["Deployment"]["spec"]["template"]["metadata"]["labels"]
    namespace = resources["Namespace"]["metadata"]["name"]
    namespaced = [r for kind, r in resources.items() if kind != "Namespace"]
    namespaced += services().values()
    assert {r["metadata"]["namespace"] for r in namespaced} == {namespace}
    container_ports = {p["name"] for p in container()["ports"]}
    expected = {"virnucpro-triton": {"grpc": 8001, "http": 8000, "metrics": 8002}}
    expected["virnucpro-triton-grpc"] = {"grpc": 8001}
    for name, service in services().items():
        assert service["spec"]["selector"].items() <= labels.items(), name
        ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
        assert ports == expected.pop(name)
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= container_ports
    assert not expected, f"missing Services: {expected}"
    budget = resources["PodDisruptionBudget"]["spec"]
    assert budget["selector"]["matchLabels"].items() <= labels.items()
    policy = resources["NetworkPolicy"]["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert sorted(p["port"] for p in policy["ingress"][0]["ports"]) == [8000, 8001, 8002]


def test_grpc_clients_are_pointed_at_a_headless_service():
    """One HTTP/2 connection per gRPC client, balanced per connection by kube-proxy: through a
    ClusterIP every request of a run lands on one pod. Headless, the name lists every ready pod,
    and the client sends to all of them (tests/test_replicas.py)."""
    headless = services()["virnucpro-triton-grpc"]["spec"]
    assert headless["clusterIP"] == "None"
    assert not headless.get("publishNotReadyAddresses")  # only pods whose models are loaded
    address = "virnucpro-triton-grpc.virnucpro.svc.cluster.local:8001"
    readme = (ROOT / "README.md").read_text()
    assert f"--url {address}" in readme and address in (K8S / "service.yaml").read_text()
    assert "--url virnucpro-triton.virnucpro:8001" not in readme


def test_autoscaler_scales_the_deployment_on_the_adapter_metric():
    resources = manifests()
    hpa = resources["HorizontalPodAutoscaler"]
    target = hpa["spec"]["scaleTargetRef"]
    deployment = resources["Deployment"]["metadata"]["name"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    (rule,) = yaml.safe_load(ADAPTER.read_text())["rules"]["custom"]
    assert metric["pods"]["metric"]["name"] == rule["name"]["as"]
    assert "nv_inference_queue_duration_us" in rule["seriesQuery"]
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]


def test_kustomization_lists_every_manifest_and_names_the_image():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(on_disk)
    (image,) = kustomization["images"]
    assert container()["image"].split(":")[0] == image["name"]


def test_kserve_inferenceservice_uses_the_triton_runtime():
    (isvc,) = load_all(KSERVE)
    predictor = isvc["spec"]["predictor"]
    model = predictor["model"]
    assert model["modelFormat"]["name"] == "triton" and model["runtime"] == "kserve-tritonserver"
    assert model["protocolVersion"] in ("v2", "grpc-v2")  # what the client speaks
    assert re.match(r"(pvc|s3|gs|https?)://", model["storageUri"])
    assert model["image"] == container()["image"]  # the runtime's Triton plus this project
    assert model["resources"]["limits"]["nvidia.com/gpu"] >= 1
    assert "--model-control-mode=none" in model["args"]
    startup = model["startupProbe"]
    assert startup["httpGet"]["path"] == "/v2/health/ready"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= STARTUP_SECONDS
    volumes = {v["name"]: v for v in predictor["volumes"]}
    (shm,) = [m for m in model["volumeMounts"] if m["mountPath"] == "/dev/shm"]
    assert volumes[shm["name"]]["emptyDir"]["medium"] == "Memory"
    assert predictor["securityContext"]["runAsNonRoot"] is True


# --- against a real server -----------------------------------------------------------------


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


# --- make serve ----------------------------------------------------------------------------


def fake_docker(tmp_path: Path, info_status: int) -> tuple[Path, Path]:
    """A `docker` that records its arguments and answers `info` with `info_status`."""
    log = tmp_path / "docker.log"
    docker = tmp_path / "docker"
    docker.write_text(
        "#!/bin/sh\n"
        f'echo "$* VIRNUCPRO_MODELS=$VIRNUCPRO_MODELS" >> "{log}"\n'
        f'if [ "$1" = info ]; then exit {info_status}; fi\n'
        "exit 0\n"
    )
    docker.chmod(0o755)
    return docker, log


@pytest.fixture
def exported(tmp_path) -> Path:
    """What `make serve` checks for in a repository: an entry with a config.pbtxt."""
    entry = tmp_path / "repository" / "esm2"
    entry.mkdir(parents=True)
    (entry / "config.pbtxt").write_text('name: "esm2"\n')
    return entry.parent


def make_serve(*variables: str) -> subprocess.CompletedProcess[str]:
    # Run as a user would, not as a sub-make of `make test` (whose jobserver flags would add
    # warnings to stderr).
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    make = shutil.which("make") or "make"
    return run(make, "serve", *variables, cwd=ROOT, env=env, timeout=60)


@pytest.mark.parametrize("engine", ["answers no", "no client"])
def test_make_serve_without_a_docker_engine_says_so_in_one_line(engine, tmp_path, exported):
    docker, log = fake_docker(tmp_path, info_status=1)
    if engine == "no client":
        docker = tmp_path / "absent" / "docker"
    result = make_serve(f"DOCKER={docker}", f"REPOSITORY={exported}")
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert "no Docker engine answers" in line and "`make serve-local`" in line
    # Nothing was built or started.
    called = log.read_text().splitlines() if log.exists() else []
    assert [c.split()[0] for c in called] == (["info"] if engine == "answers no" else [])


def test_make_serve_without_an_exported_repository_says_so(tmp_path):
    docker, log = fake_docker(tmp_path, info_status=0)
    result = make_serve(f"DOCKER={docker}", f"REPOSITORY={tmp_path / 'empty'}")
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert "`make export`" in line
    assert [c.split()[0] for c in log.read_text().splitlines()] == ["info"]


def test_make_serve_runs_compose_on_the_exported_repository(tmp_path, exported):
    docker, log = fake_docker(tmp_path, info_status=0)
    result = make_serve(f"DOCKER={docker}", f"REPOSITORY={exported}")
    assert result.returncode == 0, result.stderr
    assert log.read_text().splitlines()[-1] == (
        f"compose -f docker/compose.yaml up --build VIRNUCPRO_MODELS={exported}"
    )
