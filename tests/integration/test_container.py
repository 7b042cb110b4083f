"""The Docker image and Compose files, built and run for real with podman (skip without an engine).

One image build from the wheelhouse per session; containers publish on loopback only.
"""

from __future__ import annotations

import base64
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from service.api.health import LIVENESS_PATH, READINESS_PATH
from tests.conftest import tiff_bytes
from tests.integration.containers import (
    BASE_IMAGE,
    built_image,
    image_config,
    podman,
    require_engine,
    tool,
    wait_http,
)
from tests.integration.servers import REPO_ROOT, free_port

MAX_IMAGE_BYTES = 1.5e9
REGISTRY_BASE_BYTES = 75e6  # docker.io/library/debian:bookworm-slim, amd64, uncompressed
GPU_OVERRIDE = REPO_ROOT / "docker-compose.gpu.yml"


def _field_tiff(seed: int) -> bytes:
    """A full 1360x1024 16-bit field, as the microscope writes it."""
    pixels = np.random.default_rng(seed).integers(0, 65535, size=(1024, 1360), dtype=np.uint16)
    return tiff_bytes(pixels)


class Container:
    """`podman run -d` of the image on a free loopback port; removed on exit."""

    def __init__(self, image: str, *run_args: str) -> None:
        self.name = f"cpe-test-{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        podman("run", "-d", "--name", self.name, "-p", f"127.0.0.1:{self.port}:8000", *run_args, image)

    def wait_ready(self) -> Container:
        wait_http(f"{self.url}{READINESS_PATH}", alive=self.name)
        return self

    def logs(self) -> str:
        done = podman("logs", self.name, check=False)
        return done.stdout + done.stderr

    def remove(self) -> None:
        podman("rm", "-f", "-t", "0", self.name, check=False)


@pytest.fixture(scope="module")
def image() -> str:
    require_engine()
    return built_image()


@pytest.fixture(scope="module")
def container(image: str) -> Iterator[Container]:
    running = Container(image)
    try:
        yield running.wait_ready()
    finally:
        running.remove()


def test_image_is_small_non_root_and_checks_liveness(image: str) -> None:
    config = image_config(image)
    # The budget is for the image on the registry's debian:bookworm-slim; the locally bootstrapped
    # base (container-engine.sh: debootstrap minbase) is larger, so count what the Dockerfile adds.
    added = config["Size"] - image_config(BASE_IMAGE)["Size"]
    assert added + REGISTRY_BASE_BYTES <= MAX_IMAGE_BYTES, f"image adds {added / 1e9:.2f} GB to its base"
    assert config["Config"]["User"] == "10001:10001"
    assert LIVENESS_PATH in " ".join(config["Healthcheck"]["Test"])  # needs `build --format docker`
    env = dict(item.split("=", 1) for item in config["Config"]["Env"])
    assert env["SERVING_MODEL_REPOSITORY"] == "/models"
    listing = podman("run", "--rm", "--entrypoint", "ls", image, "/models/cpe_cnn/1").stdout.split()
    assert "saved_model.pb" in listing


def test_predicts_a_16_bit_field_and_serves_metrics(container: Container) -> None:
    response = requests.post(
        f"{container.url}/predict", data=_field_tiff(0), headers={"Content-Type": "image/tiff"}, timeout=60
    )
    assert response.status_code == 200, response.text
    (prediction,) = response.json()["predictions"]
    assert prediction["probabilities"] and abs(sum(prediction["probabilities"].values()) - 1) < 1e-3
    metrics = requests.get(f"{container.url}/metrics", timeout=10).text
    assert "serving_requests_total{" in metrics and 'route="/predict"' in metrics
    # The image's HEALTHCHECK (podman runs it on demand: no systemd timers in this sandbox).
    assert podman("healthcheck", "run", container.name, check=False).returncode == 0, container.logs()


def test_read_only_root_drains_in_flight_requests_on_sigterm(image: str) -> None:
    # One CPU bounds the work to a few seconds (48 full fields) on any machine, so SIGTERM lands
    # while requests are still queued or running.
    running = Container(
        image,
        "--read-only",
        "--read-only-tmpfs=false",
        "--tmpfs",
        "/tmp:rw,mode=1777",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--cpus",
        "1",
        # 48 fields on one CPU take ~50 s on a 2-core AVX2 machine (5 s with AVX-512): neither the
        # requests nor the drain may time out before them.
        "-e",
        "SERVING_REQUEST_TIMEOUT_S=150",
        "-e",
        "SERVING_GRACEFUL_TIMEOUT_S=150",
    )
    try:
        running.wait_ready()
        denied = podman("exec", running.name, "touch", "/app/written", check=False)
        assert denied.returncode != 0 and "Read-only file system" in denied.stderr
        # Smooth zlib-compressed fields: the bodies are a few KB, so all 8 requests are read at
        # once, while the model's work (48 full fields) is what keeps them in flight.
        ramp = np.add.outer(np.arange(1024), np.arange(1360)).astype(np.uint16)
        fields = [tiff_bytes(ramp * (seed + 1), compression="zlib") for seed in range(6)]
        body = {"instances": [{"b64": base64.b64encode(field).decode()} for field in fields]}
        started = threading.Barrier(9)
        finished_at: list[float] = []

        def send() -> int:
            started.wait()
            status = requests.post(f"{running.url}/predict", json=body, timeout=240).status_code
            finished_at.append(time.monotonic())
            return status

        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(send) for _ in range(8)]
            started.wait()
            time.sleep(1.0)  # all 8 connections accepted and their bodies read
            signalled_at = time.monotonic()
            podman("kill", "--signal", "TERM", running.name)
            statuses = [future.result() for future in futures]
        exit_code = int(podman("wait", running.name, timeout_s=240).stdout.strip())
        assert statuses == [200] * 8, running.logs()[-4000:]
        assert max(finished_at) > signalled_at, "every request ended before SIGTERM: nothing was in flight"
        assert exit_code == 0, running.logs()[-4000:]
    finally:
        running.remove()


def test_hadolint_passes() -> None:
    require_engine("hadolint")
    done = subprocess.run(
        [str(tool("hadolint")), str(REPO_ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _compose_config(*files: str, profiles: tuple[str, ...] = ()) -> dict:
    # PyYAML is not a runtime requirement (requirements-deploy.txt pins it; the dev venv gets it
    # transitively): without it only the Compose config checks skip.
    yaml = pytest.importorskip("yaml")
    args = [arg for path in files for arg in ("-f", str(REPO_ROOT / path))]
    args += [arg for profile in profiles for arg in ("--profile", profile)]
    done = subprocess.run(
        [str(tool("podman-compose")), *args, "config"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return yaml.safe_load(done.stdout)


def test_compose_files_validate_with_every_profile_and_the_gpu_override() -> None:
    require_engine("podman-compose")
    profiles = ("tfserving", "monitoring", "jobs")
    base = _compose_config("docker-compose.yml", profiles=profiles)
    assert {"api", "tfserving", "api-tfserving", "prometheus", "grafana", "jobs-db", "api-jobs"} <= set(
        base["services"])
    assert {"models", "jobs-db-data"} <= set(base["volumes"])
    # The job database's password is a secret file, never a value in the Compose file.
    jobs_env = base["services"]["api-jobs"]["environment"]
    assert jobs_env["SERVING_JOBS_DATABASE_URL"] == "postgresql://cpe@jobs-db:5432/cpe_jobs"  # no password
    assert jobs_env["SERVING_JOBS_DATABASE_PASSWORD_FILE"] == "/run/secrets/jobs-db-password"
    assert base["services"]["jobs-db"]["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/jobs-db-password"
    assert not any("PASSWORD=" in str(v) or k == "POSTGRES_PASSWORD"
                   for service in base["services"].values() for k, v in (service.get("environment") or {}).items())
    assert any(volume.endswith(":/input:ro") for volume in base["services"]["api-jobs"]["volumes"])
    for service in base["services"].values():
        assert all(str(port).startswith("127.0.0.1:") for port in service.get("ports", [])), service
    grpc_env = base["services"]["api-tfserving"]["environment"]
    assert (
        grpc_env["SERVING_BACKEND"] == "tfserving_grpc"
        and grpc_env["SERVING_TFSERVING_TARGET"] == "tfserving:8500"
    )

    gpu = _compose_config("docker-compose.yml", "docker-compose.gpu.yml", profiles=profiles)
    api = gpu["services"]["api"]
    # podman-compose lists both values of a merged build arg; podman build keeps the last one.
    args = api["build"]["args"]
    last_variant = (
        args["TF_VARIANT"] if isinstance(args, dict) else [a for a in args if a.startswith("TF_VARIANT=")][-1]
    )
    assert last_variant in ("gpu", "TF_VARIANT=gpu") and api["image"].endswith(":gpu")
    for name in ("api", "tfserving"):
        (device,) = gpu["services"][name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert gpu["services"]["tfserving"]["image"].endswith("-gpu")


def test_compose_up_default_profile_answers_on_the_published_port(image: str) -> None:
    require_engine("podman-compose")
    project = f"cpe-test-{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = {**os.environ, "API_PORT": str(port), "TF_VARIANT": "cpu"}
    compose = [str(tool("podman-compose")), "-p", project, "-f", str(REPO_ROOT / "docker-compose.yml")]
    up = subprocess.run(
        [*compose, "up", "-d"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        wait_http(f"http://127.0.0.1:{port}{READINESS_PATH}", alive=f"{project}_api_1")
        response = requests.post(
            f"http://127.0.0.1:{port}/predict",
            data=_field_tiff(1),
            headers={"Content-Type": "image/tiff"},
            timeout=60,
        )
        assert response.status_code == 200, response.text
    finally:
        subprocess.run(
            [*compose, "down", "-v", "-t", "5"], cwd=REPO_ROOT, env=env, capture_output=True, timeout=180
        )
