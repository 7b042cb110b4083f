"""deploy/k8s: every overlay renders, validates against Kubernetes 1.32, passes checkov, and
probes what the app serves; `podman kube play` of the base answers /readyz and /predict.

kubernetes-validate has no schema for prometheus-operator CRDs (ServiceMonitor, PrometheusRule):
it skips them with a warning, so their shape is checked here directly.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from flask import Flask

from service import metrics as service_metrics
from service.api.health import LIVENESS_PATH, READINESS_PATH
from service.config import ServerSettings
from tests.conftest import REPO_ROOT, tiff_bytes
from tests.integration.containers import DEPLOY_TOOLS, built_image, podman, require_engine, wait_http
from tests.integration.servers import free_port

K8S_DIR = REPO_ROOT / "deploy" / "k8s"
OVERLAYS = ("cpu", "gpu", "tfserving", "jobs-postgres")
KUBERNETES_VERSION = "1.32.0"
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}

# PyYAML is not a runtime requirement (requirements-deploy.txt has it; the dev venv gets it
# transitively): without it these tests skip.
yaml = pytest.importorskip("yaml")


def _kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip("kubectl not installed (kustomize renders the manifests)")
    return path


def _kustomize(directory: Path) -> str:
    done = subprocess.run(
        [_kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _objects(text: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def _deploy_tool(name: str) -> str:
    path = DEPLOY_TOOLS / name
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{path} missing: .ci/run runs `make setup-deploy`")
        pytest.skip(f"{name} not installed: `make setup-deploy` (requirements-deploy.txt)")
    return str(path)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Overlay name -> its rendered YAML; plus `cpu+model-pvc`, the optional component applied."""
    out = tmp_path_factory.mktemp("k8s")
    texts = {name: _kustomize(K8S_DIR / "overlays" / name) for name in OVERLAYS}
    with_pvc = out / "cpu-model-pvc"
    with_pvc.mkdir()
    overlay = os.path.relpath(K8S_DIR / "overlays" / "cpu", with_pvc)
    component = os.path.relpath(K8S_DIR / "components" / "model-pvc", with_pvc)
    (with_pvc / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [overlay],
                "components": [component],
            }
        )
    )
    texts["cpu+model-pvc"] = _kustomize(with_pvc)
    paths = {}
    for name, text in texts.items():
        paths[name] = out / f"{name.replace('+', '-')}.yaml"
        paths[name].write_text(text)
    return paths


def _deployment(path: Path, name: str = "cpe-serving") -> dict:
    (deployment,) = [
        o for o in _objects(path.read_text()) if o["kind"] == "Deployment" and o["metadata"]["name"] == name
    ]
    return deployment


def test_every_overlay_renders_with_its_objects(rendered: dict[str, Path]) -> None:
    for name, path in rendered.items():
        kinds = {o["kind"] for o in _objects(path.read_text())}
        assert {
            "Deployment",
            "Service",
            "ConfigMap",
            "PodDisruptionBudget",
            "NetworkPolicy",
            "ServiceAccount",
            "ServiceMonitor",
            "PrometheusRule",
        } <= kinds, name
    cpu = _objects(rendered["cpu"].read_text())
    assert {o["metadata"].get("namespace") for o in cpu} == {"cpe-serving"}
    (hpa,) = [o for o in cpu if o["kind"] == "HorizontalPodAutoscaler"]
    assert {m["type"] for m in hpa["spec"]["metrics"]} == {"Resource", "Pods"}
    gpu = _deployment(rendered["gpu"])["spec"]["template"]["spec"]
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu["containers"][0]["image"].endswith(":gpu") and gpu["tolerations"] and gpu["nodeSelector"]
    tfs = _objects(rendered["tfserving"].read_text())
    assert {o["spec"]["scaleTargetRef"]["name"] for o in tfs if o["kind"] == "HorizontalPodAutoscaler"} == {
        "cpe-serving",
        "cpe-tfserving",
    }
    (config,) = [
        o for o in tfs if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("cpe-serving-config")
    ]
    assert config["data"]["SERVING_BACKEND"] == "tfserving_grpc"
    assert config["data"]["SERVING_TFSERVING_TARGET"] == "cpe-tfserving:8500"
    for path in rendered.values():  # the data directory's volume, in every overlay
        spec = _deployment(path)["spec"]["template"]["spec"]
        assert {"name": "data", "mountPath": "/data"} in spec["containers"][0]["volumeMounts"]
        assert {v["name"] for v in spec["volumes"]} >= {"tmp", "data"}
    pvc = _deployment(rendered["cpu+model-pvc"])["spec"]["template"]["spec"]
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in pvc["containers"][0][
        "volumeMounts"
    ]


def test_jobs_overlay_reads_the_database_password_from_a_secret_file(rendered: dict[str, Path]) -> None:
    objects = _objects(rendered["jobs-postgres"].read_text())
    (config,) = [o for o in objects
                 if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("cpe-serving-config")]
    url = config["data"]["SERVING_JOBS_DATABASE_URL"]
    assert url.startswith("postgresql://") and ":" not in url.split("//", 1)[1].split("@", 1)[0]  # no password
    assert not [o for o in objects if o["kind"] == "Secret"]  # created by the operator, never committed
    spec = _deployment(rendered["jobs-postgres"])["spec"]["template"]["spec"]
    (api,) = spec["containers"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["jobs-db"]["secret"]["secretName"] == "cpe-serving-jobs-db"
    password_file = Path(config["data"]["SERVING_JOBS_DATABASE_PASSWORD_FILE"])
    mounts = {m["name"]: m for m in api["volumeMounts"]}
    assert password_file.parent == Path(mounts["jobs-db"]["mountPath"]) and mounts["jobs-db"]["readOnly"]
    assert mounts["plates"] == {"name": "plates", "mountPath": config["data"]["SERVING_JOBS_INPUT_ROOT"],
                                "readOnly": True}
    assert volumes["plates"]["persistentVolumeClaim"]["claimName"] in {
        o["metadata"]["name"] for o in objects if o["kind"] == "PersistentVolumeClaim"}
    assert not any("valueFrom" in env for env in api.get("env", []))
    assert {o["metadata"]["name"] for o in objects if o["kind"] == "NetworkPolicy"} == {
        "cpe-serving", "cpe-serving-postgres-egress"}


def test_objects_validate_against_kubernetes(rendered: dict[str, Path]) -> None:
    validate = _deploy_tool("kubernetes-validate")
    for name, path in rendered.items():
        done = subprocess.run(
            [validate, "--kubernetes-version", KUBERNETES_VERSION, "--strict", str(path)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        out = done.stdout + done.stderr
        assert done.returncode == 0 and "ERROR" not in out, f"{name}:\n{out}"
        skipped = set(re.findall(r"Couldn't find schema for kind (\w+)", out))
        assert skipped <= CRD_KINDS, f"{name}: unexpected kinds without schema {skipped}"
        passed = len(re.findall(r"^INFO .* passed for resource", out, re.MULTILINE))
        assert passed == sum(o["kind"] not in CRD_KINDS for o in _objects(path.read_text())), out


def test_checkov_finds_no_failed_check(rendered: dict[str, Path]) -> None:
    # Open-source checkov reports no severities, so every check must pass, not only HIGH ones;
    # the accepted skips are listed with their reasons in deploy/k8s/.checkov.yaml.
    checkov = _deploy_tool("checkov")
    for name, path in rendered.items():
        done = subprocess.run(
            [checkov, "--config-file", str(K8S_DIR / ".checkov.yaml"), "-f", str(path), "-o", "json"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        report = json.loads(done.stdout)
        failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
        assert not failed and report["summary"]["passed"] > 50, f"{name}: {failed}"


def test_probes_and_ports_match_what_the_app_serves(rendered: dict[str, Path], app: Flask) -> None:
    routes = {rule.rule for rule in app.url_map.iter_rules()}
    assert {LIVENESS_PATH, READINESS_PATH, "/metrics", "/predict"} <= routes
    default_port = ServerSettings.model_fields["port"].default
    for name, path in rendered.items():
        objects = _objects(path.read_text())
        spec = _deployment(path)["spec"]["template"]["spec"]
        (api,) = spec["containers"]
        ports = {p["name"]: p["containerPort"] for p in api["ports"]}
        assert ports == {"http": default_port}
        assert {"name": "PORT", "value": str(default_port)} in api["env"]
        for probe, want in (
            ("startupProbe", READINESS_PATH),
            ("readinessProbe", READINESS_PATH),
            ("livenessProbe", LIVENESS_PATH),
        ):
            assert api[probe]["httpGet"] == {"path": want, "port": "http"}, (name, probe)
        startup = api["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "model load + warm-up is ~60 s"
        (config,) = [
            o
            for o in objects
            if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("cpe-serving-config")
        ]
        graceful_s = int(
            config["data"].get(
                "SERVING_GRACEFUL_TIMEOUT_S", ServerSettings.model_fields["graceful_timeout_s"].default
            )
        )
        pre_stop_s = int(api["lifecycle"]["preStop"]["exec"]["command"][-1])
        assert spec["terminationGracePeriodSeconds"] > pre_stop_s + graceful_s
        (monitor,) = [
            o for o in objects if o["kind"] == "ServiceMonitor" and o["metadata"]["name"] == "cpe-serving"
        ]
        assert (
            monitor["spec"]["endpoints"][0]["path"] in routes
            and monitor["spec"]["endpoints"][0]["port"] == "http"
        )
        (service,) = [o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == "cpe-serving"]
        assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_security_context_and_service_account(rendered: dict[str, Path]) -> None:
    for name, path in rendered.items():
        for deployment in (o for o in _objects(path.read_text()) if o["kind"] == "Deployment"):
            spec = deployment["spec"]["template"]["spec"]
            assert spec["automountServiceAccountToken"] is False and spec["securityContext"]["runAsNonRoot"]
            assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
            for container in spec["containers"] + spec.get("initContainers", []):
                context = container["securityContext"]
                assert context["readOnlyRootFilesystem"] and not context["allowPrivilegeEscalation"], name
                assert context["capabilities"] == {"drop": ["ALL"]}, name
                assert container["resources"]["limits"] and container["resources"]["requests"], name


def test_rendered_files_equal_their_sources() -> None:
    import runpy

    render = runpy.run_path(str(K8S_DIR / "render.py"))
    assert render["stale"]() == [], "run `make k8s-render`"
    rule = yaml.safe_load((K8S_DIR / "base" / "prometheusrule.yaml").read_text())
    rules_dir = REPO_ROOT / "deploy" / "prometheus" / "rules"
    groups = [
        g for path in sorted(rules_dir.glob("*.yml")) for g in yaml.safe_load(path.read_text())["groups"]
    ]
    assert rule["kind"] == "PrometheusRule" and rule["spec"]["groups"] == groups


def test_queue_autoscaling_metric_is_exported_and_served_by_the_adapter_rule() -> None:
    hpa = yaml.safe_load((K8S_DIR / "overlays" / "cpu" / "hpa.yaml").read_text())
    (pods,) = [m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    name = pods["metric"]["name"]
    adapter = yaml.safe_load((K8S_DIR / "overlays" / "cpu" / "prometheus-adapter-values.yaml").read_text())
    (rule,) = adapter["rules"]["custom"]
    assert rule["name"]["as"] == name and rule["seriesQuery"].startswith(name + "{")
    assert name in {family.name for family in service_metrics.REGISTRY.collect()}


@pytest.fixture(scope="module")
def kube_play(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The rendered base (no namespace: podman has none), one replica, port published on loopback.

    podman kube play runs Deployments, ConfigMaps and Services; the cluster-only kinds (PDB,
    NetworkPolicy, HPA, CRDs, ServiceAccount) are left out, and hostPort/hostIP stand in for the
    Service (podman 4.3 has no `--publish`).
    """
    require_engine()
    image = built_image()
    objects = _objects(_kustomize(K8S_DIR / "base"))
    port = free_port()
    played = [o for o in objects if o["kind"] in ("ConfigMap", "Deployment")]
    for deployment in (o for o in played if o["kind"] == "Deployment"):
        deployment["metadata"]["name"] = f"cpe-k8s-{uuid.uuid4().hex[:6]}"
        deployment["spec"]["replicas"] = 1
        (api,) = deployment["spec"]["template"]["spec"]["containers"]
        assert api["image"] == image
        api["ports"][0].update(hostPort=port, hostIP="127.0.0.1")
    path = tmp_path_factory.mktemp("kube-play") / "base.yaml"
    path.write_text(yaml.safe_dump_all(played))
    podman("kube", "play", str(path), timeout_s=180)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        podman("kube", "down", str(path), check=False, timeout_s=120)


def test_podman_kube_play_of_the_base_serves_predictions(kube_play: str) -> None:
    wait_http(f"{kube_play}{READINESS_PATH}")
    pixels = np.random.default_rng(7).integers(0, 65535, size=(1024, 1360), dtype=np.uint16)
    response = requests.post(
        f"{kube_play}/predict", data=tiff_bytes(pixels), headers={"Content-Type": "image/tiff"}, timeout=60
    )
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["probabilities"]
