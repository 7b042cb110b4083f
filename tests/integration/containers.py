"""Podman helpers for the container and Kubernetes tests: find the engine, build the image once.

The engine is prepared by `../shared/tools/container-engine.sh` (podman, podman-compose,
hadolint and a locally built debian:bookworm-slim); without it these tests skip, except in CI
where that script exists and `.ci/run` has already run it.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import time

import pytest
import requests

from tests.integration.servers import REPO_ROOT

BASE_IMAGE = "docker.io/library/debian:bookworm-slim"
IMAGE = "localhost/cpe-serving:cpu"  # the tag `make image` and docker-compose.yml use
ENGINE_SCRIPT = REPO_ROOT.parent / "shared" / "tools" / "container-engine.sh"
BUILD_TIMEOUT_S = 1200


DEPLOY_TOOLS = REPO_ROOT / ".venv" / "deploy-tools" / "bin"  # `make setup-deploy`


def tool(name: str) -> str | None:
    """A command from PATH, else from the deploy-tools virtualenv (requirements-deploy.txt)."""
    return shutil.which(name) or shutil.which(name, path=str(DEPLOY_TOOLS))


def require_engine(*tools: str) -> str:
    """podman's path, or skip (fail in CI, where .ci/run prepares the engine) saying what is missing."""
    podman = shutil.which("podman")
    missing = [name for name in tools if tool(name) is None]
    if podman is None:
        reason = "podman not on PATH"
    elif subprocess.run([podman, "image", "exists", BASE_IMAGE], capture_output=True).returncode:
        reason = f"base image {BASE_IMAGE} not in podman's store (registries are unreachable here)"
    elif missing:
        reason = f"{', '.join(missing)} not on PATH"
    else:
        return podman
    hint = f"; as root run `bash {ENGINE_SCRIPT}` to prepare the container engine"
    if os.environ.get("CI") and ENGINE_SCRIPT.exists():
        pytest.fail(f"{reason}: .ci/run should have run {ENGINE_SCRIPT}")
    pytest.skip(reason + hint)


def podman(*args: str, timeout_s: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `podman ARGS`; on failure the assertion shows its output."""
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout_s)
    if check:
        assert done.returncode == 0, (
            f"podman {' '.join(args)}: rc={done.returncode}\n{done.stdout}\n{done.stderr}"
        )
    return done


@functools.cache
def built_image() -> str:
    """Build IMAGE from the wheelhouse (brought up to date first), once per test session."""
    # make re-downloads only when the requirements files are newer than the wheelhouse.
    subprocess.run(["make", "wheelhouse", "TF_VARIANT=cpu"], cwd=REPO_ROOT, check=True, timeout=BUILD_TIMEOUT_S)
    build = subprocess.run(
        ["podman", "build", "--format", "docker", "--build-arg", "TF_VARIANT=cpu", "-t", IMAGE, "."],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
    )
    assert build.returncode == 0, f"podman build failed:\n{build.stdout[-4000:]}\n{build.stderr[-4000:]}"
    return IMAGE


def image_config(image: str) -> dict:
    return json.loads(podman("image", "inspect", image).stdout)[0]


def wait_http(url: str, timeout_s: float = 180, alive: str | None = None) -> None:
    """Poll until `url` answers 200; `alive` (a container name) must keep running meanwhile."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        if alive is not None:
            state = podman("inspect", "--format", "{{.State.Status}}", alive, check=False).stdout.strip()
            if state not in ("running", "created", "configured", ""):
                logs = podman("logs", alive, check=False)
                raise AssertionError(f"{alive} is {state}:\n{(logs.stdout + logs.stderr)[-4000:]}")
        time.sleep(0.5)
    raise AssertionError(f"{url} not 200 after {timeout_s} s")
