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
import sys
from pathlib import Path

import pytest
import tomllib
import yaml
from servers import TRITON_OF_BASE

from virnucpro_triton.credentials import (
    TLS_CERT_ENV,
    TLS_CLIENT_CA_ENV,
    TLS_CLIENT_CERT_ENV,
    TLS_CLIENT_KEY_ENV,
    TLS_KEY_ENV,
    TOKEN_FILE_ENV,
)

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
K8S = DOCKER / "k8s"
KSERVE = DOCKER / "kserve" / "inferenceservice.yaml"
ADAPTER = DOCKER / "monitoring" / "prometheus-adapter-values.yaml"
TOOLS = ROOT / ".venv-tools" / "bin"
BASE_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"
# Oldest and newest Kubernetes whose schemas kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.25.0", "1.37.0")
STARTUP_SECONDS = 600  # ESM-2 3B needs minutes to load
# Triton's --exit-timeout-secs default: on SIGTERM it waits this long for in-flight requests
# and for the models to unload, then exits. A clean stop of ESM-2 3B fits inside it; the
# grace period before SIGKILL gives the same again for the stubs' exit.
TRITON_EXIT_TIMEOUT = 30


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
    for overlay in ("compose.gpus.yaml", "compose.tls.yaml", "compose.mtls.yaml"):
        result = run(tools / "check-jsonschema", *schema, DOCKER / overlay)
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
    stages: list[list[str]] = []
    for line in dockerfile_lines():
        if line.startswith("ARG ") and not stages:
            continue  # build arguments of the FROM lines
        if line.startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return stages


def dockerfile_lines() -> list[str]:
    text = re.sub(r"\\\n", " ", (DOCKER / "Dockerfile").read_text())
    return [ln.strip() for ln in text.splitlines() if ln.strip()[:1] not in ("", "#")]


def image_command() -> list[str]:
    """The server command of the image (its CMD): the one home of Triton's flags."""
    (cmd,) = [i for i in dockerfile_lines() if i.startswith("CMD ")]
    return json.loads(cmd.removeprefix("CMD "))


def test_dockerfile_runtime_stage():
    # NGC's image unless the build says otherwise (the container tests build on a stand-in).
    assert dockerfile_lines()[0] == f"ARG BASE_IMAGE={BASE_IMAGE}"
    builder, runtime = dockerfile_stages()
    assert builder[0] == "FROM ${BASE_IMAGE} AS builder" and runtime[0] == "FROM ${BASE_IMAGE}"
    # Nothing is installed in the final image: compilers, pip and caches stay in the builder.
    assert not [i for i in runtime if i.startswith(("RUN", "ADD"))], runtime
    assert "COPY --from=builder /opt/venv /opt/venv" in runtime
    env = next(i for i in runtime if i.startswith("ENV "))
    assert "PATH=/opt/venv/bin:${PATH}" in env  # the backend stub's python3 is the venv's
    (user,) = [i.split()[1] for i in runtime if i.startswith("USER ")]
    assert re.fullmatch(r"[1-9]\d*:\d+", user)  # numeric and not root
    (healthcheck,) = [i for i in runtime if i.startswith("HEALTHCHECK")]
    assert "/v2/health/ready" in healthcheck
    assert runtime[-1].startswith("CMD ")
    # The front door wraps the command: oversize requests never reach tritonserver.
    assert runtime[-2] == 'ENTRYPOINT ["virnucpro-triton-door"]'
    cmd = image_command()
    assert cmd[0] == "tritonserver"
    assert {"--model-repository=/models", "--model-control-mode=none"} <= set(cmd)
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
    assert ignore[:5] == [
        "*",
        "!pyproject.toml",
        "!virnucpro_triton/",
        "!docker/requirements.txt",
        "!docker/build-requirements.txt",
    ]


def compose_service(name: str = "compose.yaml") -> dict:
    (service,) = yaml.safe_load((DOCKER / name).read_text())["services"].values()
    return service


def test_compose_service():
    service = compose_service()
    # The GPU reservation lives in its own file, which `make serve GPUS=none` leaves out.
    assert "deploy" not in service
    (gpus,) = compose_service("compose.gpus.yaml")["deploy"]["resources"]["reservations"]["devices"]
    assert gpus == {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}
    assert re.fullmatch(r"(\d+)gb", service["shm_size"]) and int(service["shm_size"][:-2]) >= 4
    # BIND:HOST:CONTAINER; loopback and the image's port unless the environment says otherwise
    port = r"\$\{VIRNUCPRO_BIND:-127\.0\.0\.1\}:\$\{VIRNUCPRO_(\w+)_PORT:-(\d+)\}:(\d+)"
    published = {re.fullmatch(port, p).groups() for p in service["ports"]}
    assert published == {
        ("HTTP", "8000", "8000"),
        ("GRPC", "8001", "8001"),
        ("METRICS", "8002", "8002"),
    }
    (models,) = service["volumes"]
    assert models["target"] == "/models" and models["read_only"] is True
    assert "/v2/health/ready" in " ".join(service["healthcheck"]["test"])
    assert service["restart"] == "unless-stopped"
    assert service["build"] == {
        "context": "..",
        "dockerfile": "docker/Dockerfile",
        "args": ["BASE_IMAGE"],  # from the environment when set; else the Dockerfile's NGC base
    }


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
    and the client sends to all of them (tests/server/test_replicas.py)."""
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


# --- the image's locks ----------------------------------------------------------------------


def pins(requirements: list[str]) -> dict[str, str]:
    """name -> version of `name==version` lines (names normalised, extras dropped)."""
    found = {}
    for line in requirements:
        name, version = re.fullmatch(r"([\w.-]+)(?:\[[\w,]+\])?==([\w.+]+)", line).groups()
        found[re.sub(r"[-_.]+", "-", name).lower()] = version
    return found


def requirement_lines(path: Path) -> list[str]:
    return [ln for ln in path.read_text().splitlines() if ln[:1] not in ("", "#")]


def build_system() -> list[str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]


# Each of what the image installs: the models' packages (--no-deps), virtualenv and its
# dependencies (--no-deps), and the tools pip's build isolation installs to build /src.
IMAGE_LOCKS = {
    "requirements.txt": lambda: requirement_lines(DOCKER / "requirements.txt"),
    "build-requirements.txt": lambda: requirement_lines(DOCKER / "build-requirements.txt"),
    "build-system": build_system,
}


def python310() -> Path:
    """The base image's Python version on this machine: PYTHON310, else a pyenv 3.10."""
    if os.environ.get("PYTHON310"):
        return Path(os.environ["PYTHON310"])
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    found = sorted(pyenv.glob("versions/3.10.*/bin/python3.10"))
    if not found:
        pytest.fail("no Python 3.10 (the image's) found; set PYTHON310=/path/to/python3.10")
    return found[-1]


@pytest.mark.slow  # pip fetches the index pages of torch and the CUDA wheels
@pytest.mark.parametrize("lock", sorted(IMAGE_LOCKS))
def test_the_image_locks_are_complete_for_python_3_10(lock, tmp_path):
    """pip under Python 3.10 resolves the lock with dependencies: it must install exactly the
    pins. A package needed only below 3.11 (exceptiongroup, tomli) missing from a lock
    resolved on 3.11 shows up here instead of in the image build."""
    requirements = IMAGE_LOCKS[lock]()
    listed = tmp_path / "requirements.txt"
    listed.write_text("\n".join(requirements) + "\n")
    report = tmp_path / "report.json"
    # The index alone: this machine's pip configuration (constraints, local wheels) stays out.
    env = {k: v for k, v in os.environ.items() if k not in ("PIP_FIND_LINKS", "PIP_CONSTRAINT")}
    env["PIP_CONFIG_FILE"] = os.devnull
    pip = (python310(), "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet")
    result = run(*pip, "--report", report, "-r", listed, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    install = json.loads(report.read_text())["install"]
    resolved = {
        re.sub(r"[-_.]+", "-", i["metadata"]["name"]).lower(): i["metadata"]["version"]
        for i in install
    }
    assert resolved == pins(requirements)


def test_the_project_is_built_by_pinned_tools_with_an_spdx_licence():
    (setuptools,) = pins(build_system()).items()
    assert setuptools[0] == "setuptools" and int(setuptools[1].split(".")[0]) >= 77  # reads SPDX
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"] == "MIT"
    # The image builds /src with them (pip's build isolation installs exactly those), with the
    # pip that the pinned virtualenv brings.
    builder, _ = dockerfile_stages()
    (build,) = [i for i in builder if "pip install --no-cache-dir --no-deps /src" in i]
    assert "--no-build-isolation" not in build
    (seed,) = [i for i in builder if "--target /tmp/virtualenv" in i]
    assert "-r /tmp/build-requirements.txt" in seed


# --- the exported repository as another uid sees it ----------------------------------------


def test_export_leaves_files_that_any_uid_can_read_whatever_the_umask(tmp_path):
    """The image runs as uid 1000 and the exporter is often root; safetensors writes 0600."""
    out = tmp_path / "repository"
    cli = Path(sys.executable).with_name("virnucpro-triton")
    result = subprocess.run(
        [cli, "export", "--tiny", "--out", out], capture_output=True, text=True, umask=0o077
    )
    assert result.returncode == 0, result.stderr[-3000:]
    modes = {p.relative_to(out): p.stat().st_mode & 0o777 for p in [out, *out.rglob("*")]}
    assert any(p.name == "weights.safetensors" for p in modes)
    wrong = {
        str(p): oct(m) for p, m in modes.items() if m != (0o755 if (out / p).is_dir() else 0o644)
    }
    assert wrong == {}


# --- compose, Kubernetes and KServe in step with the image ---------------------------------

# What KServe's kserve-tritonserver runtime passes itself: the repository it mounts, its ports.
HTTP_PORT = 8000  # the image's (EXPOSE), where its health check asks
KSERVE_RUNTIME_FLAGS = ("--model-store=", "--model-repository=", "--http-port=", "--grpc-port=")
KSERVE_HTTP_PORT = 8080  # the runtime's --http-port


def exit_timeout(args: list[str]) -> int:
    flags = [a for a in args if a.startswith("--exit-timeout-secs=")]
    return int(flags[-1].split("=", 1)[1]) if flags else TRITON_EXIT_TIMEOUT


def test_compose_kubernetes_and_kserve_run_the_image_command():
    """Triton's flags have one home, the Dockerfile's CMD: compose runs it as it is, the
    Deployment repeats it, KServe appends what its runtime does not set itself."""
    command = image_command()
    assert "command" not in compose_service() and "entrypoint" not in compose_service()
    triton = container()
    assert "command" not in triton and triton["args"] == command
    model = load_all(KSERVE)[0]["spec"]["predictor"]["model"]
    assert model["args"] == [a for a in command[1:] if not a.startswith(KSERVE_RUNTIME_FLAGS)]
    # None of them replaces the image's ENTRYPOINT, the front door that limits requests.
    assert "command" not in model


def test_ports_and_probes_match_the_image():
    exposed = next(i for i in dockerfile_lines() if i.startswith("EXPOSE ")).split()[1:]
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    assert sorted(ports.values()) == sorted(map(int, exposed))
    published = sorted(p.rsplit(":", 1)[1] for p in compose_service()["ports"])
    assert published == sorted(exposed)
    # Compose runs the image's health check (health.py, on the image's HTTP port) as it is.
    check = image_healthcheck()
    assert compose_service()["healthcheck"]["test"] == ["CMD", *check]
    assert check[:3] == ["python3", "-m", "virnucpro_triton.health"] and HTTP_PORT == 8000
    image_path = check[check.index("--path") + 1]
    kinds = ("startupProbe", "readinessProbe", "livenessProbe")
    model = load_all(KSERVE)[0]["spec"]["predictor"]["model"]
    k8s = {
        k: (container()[k]["httpGet"]["path"], ports[container()[k]["httpGet"]["port"]])
        for k in kinds
    }
    kserve = {k: (model[k]["httpGet"]["path"], model[k]["httpGet"]["port"]) for k in kinds}
    # The same paths; each on its server's HTTP port (the image's 8000, KServe's runtime 8080).
    assert {k: path for k, (path, _) in k8s.items()} == {k: path for k, (path, _) in kserve.items()}
    assert k8s["readinessProbe"][0] == k8s["startupProbe"][0] == image_path
    assert {port for _, port in k8s.values()} == {8000}
    assert {port for _, port in kserve.values()} == {KSERVE_HTTP_PORT}
    for probes in (container(), model):
        startup = probes["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= STARTUP_SECONDS


def image_healthcheck() -> list[str]:
    (healthcheck,) = [i for i in dockerfile_lines() if i.startswith("HEALTHCHECK")]
    return json.loads(healthcheck.split(" CMD ", 1)[1])


def secret_files(spec: dict, mounts: list[dict], volumes: list[dict]) -> dict[str, tuple]:
    """{variable: (Secret, key)} of each environment variable naming a file of a Secret volume,
    which must be mounted read-only and readable by the pod's group alone."""
    volumes = {v["name"]: v for v in volumes}
    found = {}
    for variable in spec["env"]:
        path = Path(variable["value"])
        (mount,) = [m for m in mounts if Path(m["mountPath"]) == path.parent]
        assert mount["readOnly"] is True
        secret = volumes[mount["name"]]["secret"]
        assert secret["defaultMode"] == 0o440
        found[variable["name"]] = (secret["secretName"], path.name)
    return found


def test_every_way_of_serving_gives_the_door_a_token_file_of_a_secret():
    """The image's door listens beyond loopback, where it refuses to serve without access
    tokens: compose, Kubernetes and KServe mount a token file read-only and name it in the
    variable the door reads (credentials.py); health stays open (no --auth-health)."""
    # compose: a secret from the host's file, bind-mounted read-only under /run/secrets
    service = compose_service()
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert f"{TOKEN_FILE_ENV}=/run/secrets/virnucpro_token" in service["environment"]
    assert service["secrets"] == ["virnucpro_token"]
    assert compose["secrets"]["virnucpro_token"]["file"].startswith(f"${{{TOKEN_FILE_ENV}:?")
    # compose.tls.yaml: the certificate and key the same way, from the host's variables;
    # compose.mtls.yaml the client CA, and the health check's client certificate and key
    overlays = {
        "compose.tls.yaml": (TLS_CERT_ENV, TLS_KEY_ENV),
        "compose.mtls.yaml": MUTUAL,
    }
    for name, variables in overlays.items():
        document = yaml.safe_load((DOCKER / name).read_text())
        (overlay,) = document["services"].values()
        assert len(overlay["secrets"]) == len(variables)
        for variable in variables:
            secret = variable.lower()  # VIRNUCPRO_TLS_KEY: secret virnucpro_tls_key
            assert f"{variable}=/run/secrets/{secret}" in overlay["environment"]
            assert secret in overlay["secrets"]
            assert document["secrets"][secret]["file"].startswith(f"${{{variable}:?")
    # Kubernetes and KServe: the Secret virnucpro-access, readable by the pod's group
    pod, triton = pod_spec(), container()
    assert secret_files(triton, triton["volumeMounts"], pod["volumes"]) == {
        TOKEN_FILE_ENV: ("virnucpro-access", "token")
    }
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]
    predictor = load_all(KSERVE)[0]["spec"]["predictor"]
    model = predictor["model"]
    assert secret_files(model, model["volumeMounts"], predictor["volumes"]) == {
        TOKEN_FILE_ENV: ("virnucpro-access", "token")
    }
    assert predictor["securityContext"]["fsGroup"] == predictor["securityContext"]["runAsGroup"]
    for args in (image_command(), triton["args"], model["args"]):
        assert not [a for a in args if a.startswith(("--auth-health", "--no-auth"))]
    # Clients of the Services are told to send the token.
    assert "--token-file" in (K8S / "service.yaml").read_text()
    assert "--token-file" in KSERVE.read_text()


def test_every_grace_period_covers_a_clean_stop():
    """SIGTERM: Triton lets in-flight requests finish and unloads the models for up to its
    exit timeout; the platform's grace period before SIGKILL must outlast that."""
    clean_stop = exit_timeout(image_command())
    compose_grace = int(compose_service()["stop_grace_period"].removesuffix("s"))
    pod_grace = pod_spec()["terminationGracePeriodSeconds"]
    kserve_grace = load_all(KSERVE)[0]["spec"]["predictor"]["terminationGracePeriodSeconds"]
    for grace in (compose_grace, pod_grace, kserve_grace):
        assert grace >= 2 * clean_stop


# --- against a real server -----------------------------------------------------------------


# --- make serve ----------------------------------------------------------------------------


def fake_engine(
    tmp_path: Path,
    info: int = 0,
    plugin: str | None = "2.26.1",
    standalone: str | None = None,
    runtimes: tuple[str, ...] = ("runc", "nvidia"),
) -> tuple[Path, Path]:
    """A `docker` (and a `docker-compose` when `standalone` is a version) answering as an engine
    would: `info` exits `info`, `info --format` lists `runtimes`, `compose version --short`
    gives `plugin` (None: no compose plugin). Every call is recorded in the log."""
    log = tmp_path / "docker.log"
    listed = json.dumps({name: {"path": name} for name in runtimes})
    compose = (
        f"echo {plugin}; exit 0"
        if plugin
        else "echo \"'compose' is not a docker command\" >&2; exit 1"
    )
    docker = tmp_path / "docker"
    docker.write_text(
        "#!/bin/sh\n"
        f'echo "docker $* VIRNUCPRO_MODELS=$VIRNUCPRO_MODELS" >> "{log}"\n'
        f'echo "{ACCESS_VARIABLES}" > "{log}.access"\n'
        f'if [ "$1 $2" = "info --format" ]; then echo \'{listed}\'; exit {info}; fi\n'
        f'if [ "$1" = info ]; then exit {info}; fi\n'
        f'if [ "$1 $2" = "compose version" ]; then {compose}; fi\n'
        "exit 0\n"
    )
    standalone_compose = tmp_path / "docker-compose"
    if standalone:
        standalone_compose.write_text(
            "#!/bin/sh\n"
            f'echo "docker-compose $* VIRNUCPRO_MODELS=$VIRNUCPRO_MODELS" >> "{log}"\n'
            f'if [ "$1" = version ]; then echo {standalone}; fi\n'
            "exit 0\n"
        )
    for script in (docker, standalone_compose):
        if script.exists():
            script.chmod(0o755)
    return docker, log


# The access files compose is given (the fake engine writes them beside its log).
MUTUAL = (TLS_CLIENT_CA_ENV, TLS_CLIENT_CERT_ENV, TLS_CLIENT_KEY_ENV)
ACCESS_VARIABLES = " ".join(
    f"{v}=${v}" for v in (TOKEN_FILE_ENV, TLS_CERT_ENV, TLS_KEY_ENV, *MUTUAL)
)


def calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def access_given(log: Path) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in log.with_suffix(".log.access").read_text().split())


@pytest.fixture
def exported(tmp_path) -> Path:
    """What `make serve` checks for in a repository: an entry with a config.pbtxt."""
    entry = tmp_path / "repository" / "esm2"
    entry.mkdir(parents=True)
    (entry / "config.pbtxt").write_text('name: "esm2"\n')
    return entry.parent


@pytest.fixture
def token(tmp_path) -> str:
    """A token file, as a make variable: `make serve` requires one."""
    path = tmp_path / "token"
    path.write_text("0123456789abcdef0123456789abcdef\n")
    return f"{TOKEN_FILE_ENV}={path}"


def make_serve(docker: Path, *variables: str) -> subprocess.CompletedProcess[str]:
    # Run as a user would, not as a sub-make of `make test` (whose jobserver flags would add
    # warnings to stderr). The standalone docker-compose is the fake one or none, never the
    # host's.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    make = shutil.which("make") or "make"
    engine = (f"DOCKER={docker}", f"DOCKER_COMPOSE={docker.with_name('docker-compose')}")
    return run(make, "serve", *engine, *variables, cwd=ROOT, env=env, timeout=60)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.splitlines()
    return line


@pytest.mark.parametrize("engine", ["answers no", "no client"])
def test_make_serve_without_a_docker_engine_says_so_in_one_line(engine, tmp_path, exported):
    docker, log = fake_engine(tmp_path, info=1)
    if engine == "no client":
        docker = tmp_path / "absent" / "docker"
    line = one_line(make_serve(docker, f"REPOSITORY={exported}"))
    assert "no Docker engine answers" in line and "`make serve-local`" in line
    # Nothing was built or started.
    assert [c.split()[1] for c in calls(log)] == (["info"] if engine == "answers no" else [])


@pytest.mark.parametrize("standalone", [None, "1.29.2"])
def test_make_serve_without_compose_v2_says_so_in_one_line(standalone, tmp_path, exported):
    """No compose plugin, and no docker-compose or bookworm's v1 one."""
    docker, log = fake_engine(tmp_path, plugin=None, standalone=standalone)
    line = one_line(make_serve(docker, f"REPOSITORY={exported}"))
    assert "Compose v2 is missing" in line and "docker compose" in line
    assert not [c for c in calls(log) if " up " in c]


def test_make_serve_uses_a_standalone_docker_compose_of_version_2(tmp_path, exported, token):
    docker, log = fake_engine(tmp_path, plugin=None, standalone="2.26.1")
    result = make_serve(docker, f"REPOSITORY={exported}", token)
    assert result.returncode == 0, result.stderr
    assert calls(log)[-1] == (
        f"docker-compose -f docker/compose.yaml -f docker/compose.gpus.yaml up --build "
        f"VIRNUCPRO_MODELS={exported}"
    )


def test_make_serve_asking_for_gpus_without_the_nvidia_runtime_says_so(tmp_path, exported):
    docker, log = fake_engine(tmp_path, runtimes=("runc",))
    line = one_line(make_serve(docker, f"REPOSITORY={exported}"))
    assert "NVIDIA container runtime is missing" in line and "GPUS=none" in line
    assert not [c for c in calls(log) if " up " in c]


def test_make_serve_gpus_none_runs_without_the_gpu_reservation(tmp_path, exported, token):
    docker, log = fake_engine(tmp_path, runtimes=("runc",))
    result = make_serve(docker, "GPUS=none", f"REPOSITORY={exported}", token)
    assert result.returncode == 0, result.stderr
    assert calls(log)[-1] == (
        f"docker compose -f docker/compose.yaml up --build VIRNUCPRO_MODELS={exported}"
    )


def test_make_serve_refuses_an_unknown_gpus_value(tmp_path, exported):
    docker, _ = fake_engine(tmp_path)
    assert "GPUS=some" in one_line(make_serve(docker, "GPUS=some", f"REPOSITORY={exported}"))


def test_make_serve_without_an_exported_repository_says_so(tmp_path):
    docker, log = fake_engine(tmp_path)
    line = one_line(make_serve(docker, f"REPOSITORY={tmp_path / 'empty'}"))
    assert "`make export`" in line
    assert not [c for c in calls(log) if " up " in c]


def test_make_serve_runs_compose_with_the_gpus_on_the_exported_repository(
    tmp_path, exported, token
):
    docker, log = fake_engine(tmp_path)
    result = make_serve(docker, f"REPOSITORY={exported}", token)
    assert result.returncode == 0, result.stderr
    assert calls(log)[-1] == (
        f"docker compose -f docker/compose.yaml -f docker/compose.gpus.yaml up --build "
        f"VIRNUCPRO_MODELS={exported}"
    )


def test_make_serve_without_a_token_file_says_so_in_one_line(tmp_path, exported):
    docker, log = fake_engine(tmp_path)
    line = one_line(make_serve(docker, f"REPOSITORY={exported}"))
    assert f"set {TOKEN_FILE_ENV} to a file of access tokens" in line and "openssl rand" in line
    missing = tmp_path / "no-token"
    line = one_line(make_serve(docker, f"REPOSITORY={exported}", f"{TOKEN_FILE_ENV}={missing}"))
    assert f"{TOKEN_FILE_ENV}={missing}: no such file" in line
    assert not [c for c in calls(log) if " up " in c]


def test_make_serve_gives_compose_the_token_and_tls_files_as_absolute_paths(tmp_path, exported):
    """Compose reads relative paths from docker/: make passes each file absolute, and adds
    compose.tls.yaml when a certificate is named (its key required with it)."""
    docker, log = fake_engine(tmp_path)
    for name in ("token", "server.pem", "server.key"):
        (tmp_path / name).write_text("x\n")
    relative = {
        TOKEN_FILE_ENV: os.path.relpath(tmp_path / "token", ROOT),
        TLS_CERT_ENV: os.path.relpath(tmp_path / "server.pem", ROOT),
    }
    line = one_line(
        make_serve(docker, "GPUS=none", f"REPOSITORY={exported}",
                   *(f"{k}={v}" for k, v in relative.items()))
    )  # fmt: skip
    assert f"{TLS_KEY_ENV}=: no such file" in line
    relative[TLS_KEY_ENV] = os.path.relpath(tmp_path / "server.key", ROOT)
    variables = [f"{k}={v}" for k, v in relative.items()]
    result = make_serve(docker, "GPUS=none", f"REPOSITORY={exported}", *variables)
    assert result.returncode == 0, result.stderr
    assert calls(log)[-1] == (
        "docker compose -f docker/compose.yaml -f docker/compose.tls.yaml up --build "
        f"VIRNUCPRO_MODELS={exported}"
    )
    assert access_given(log) == {
        TOKEN_FILE_ENV: str(tmp_path / "token"),
        TLS_CERT_ENV: str(tmp_path / "server.pem"),
        TLS_KEY_ENV: str(tmp_path / "server.key"),
        **dict.fromkeys(MUTUAL, ""),  # no mutual TLS
    }


def test_make_serve_adds_mutual_tls_with_the_health_checks_client_certificate(tmp_path, exported):
    docker, log = fake_engine(tmp_path)
    files = {
        variable: tmp_path / variable.lower()
        for variable in (TOKEN_FILE_ENV, TLS_CERT_ENV, TLS_KEY_ENV, *MUTUAL)
    }
    for path in files.values():
        path.write_text("x\n")
    variables = [f"{k}={v}" for k, v in files.items()]
    without_tls = [v for v in variables if not v.startswith((TLS_CERT_ENV, TLS_KEY_ENV))]
    line = one_line(make_serve(docker, "GPUS=none", f"REPOSITORY={exported}", *without_tls))
    assert f"{TLS_CLIENT_CA_ENV} needs {TLS_CERT_ENV} and {TLS_KEY_ENV}" in line
    no_key = [v for v in variables if not v.startswith(TLS_CLIENT_KEY_ENV)]
    line = one_line(make_serve(docker, "GPUS=none", f"REPOSITORY={exported}", *no_key))
    assert f"{TLS_CLIENT_KEY_ENV}=: no such file; mutual TLS needs" in line
    assert not [c for c in calls(log) if " up " in c]
    result = make_serve(docker, "GPUS=none", f"REPOSITORY={exported}", *variables)
    assert result.returncode == 0, result.stderr
    assert calls(log)[-1] == (
        "docker compose -f docker/compose.yaml -f docker/compose.tls.yaml "
        f"-f docker/compose.mtls.yaml up --build VIRNUCPRO_MODELS={exported}"
    )
    assert access_given(log) == {k: str(v) for k, v in files.items()}
