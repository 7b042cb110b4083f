# `make run` serves the committed model; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
PORT ?= 8000
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: setup setup-dev run test train train-lofo bench lint clean

$(VENV)/.runtime: requirements.txt requirements-nodeps.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -r requirements.txt
	$(PIP) install --no-deps -r requirements-nodeps.txt
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt requirements-testdata.txt
	$(PIP) install -r requirements-dev.txt
	$(PIP) install --no-deps -r requirements-testdata.txt
	touch $@

setup: $(VENV)/.runtime
setup-dev: $(VENV)/.dev

run: setup  ## serve model_repository/ on 0.0.0.0:$(PORT)
	PORT=$(PORT) $(VENV)/bin/gunicorn -c python:service.gunicorn_conf "service.app:create_app()"

test: setup-dev  ## the whole suite, as CI runs it
	$(PY) -m pytest -q

train: setup-dev  ## regenerate synthetic data (generator v2), train, gate and export model_repository/cpe_cnn/2
	$(PY) -m training.train

train-lofo: setup-dev  ## leave-one-family-out validation of the recipe -> training/results/lofo.{json,md}
	$(PY) -m training.lofo

bench: setup-dev  ## side-by-side throughput/latency table (see README, Performance)
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) .pytest_cache

# --- containers (deploy/README.md) -----------------------------------------------------------
# The image build cannot reach PyPI: `make wheelhouse` downloads every wheel for the image's
# Python (Debian bookworm's CPython 3.11, manylinux x86_64) and the Dockerfile installs only from
# it (`pip install --no-index --find-links`). TF_VARIANT=gpu swaps tensorflow-cpu for
# tensorflow[and-cuda] at the same version (several GB of CUDA wheels).
TF_VARIANT ?= cpu
IMAGE ?= cpe-serving:$(TF_VARIANT)
CONTAINER_ENGINE ?= podman
WHEEL_PLATFORMS := manylinux2014_x86_64 manylinux_2_17_x86_64 manylinux_2_27_x86_64 \
	manylinux_2_28_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64 manylinux_2_36_x86_64
PIP_DOWNLOAD := $(PIP) download --dest wheelhouse --only-binary=:all: --python-version 3.11 \
	--implementation cp --abi cp311 $(addprefix --platform ,$(WHEEL_PLATFORMS))

.PHONY: wheelhouse image

wheelhouse/.$(TF_VARIANT): requirements.txt requirements-nodeps.txt deploy/docker/requirements.sh
	mkdir -p wheelhouse
	sh deploy/docker/requirements.sh $(TF_VARIANT) < requirements.txt | $(PIP_DOWNLOAD) -r /dev/stdin
	$(PIP_DOWNLOAD) --no-deps -r requirements-nodeps.txt
	touch $@

wheelhouse: wheelhouse/.$(TF_VARIANT)  ## wheels for the image (TF_VARIANT=cpu|gpu)

# podman writes OCI images by default, which drop the HEALTHCHECK: ask for Docker's format.
IMAGE_FORMAT := $(if $(filter podman,$(notdir $(CONTAINER_ENGINE))),--format docker)

image: wheelhouse  ## build $(IMAGE) from the wheelhouse, offline
	$(CONTAINER_ENGINE) build $(IMAGE_FORMAT) --build-arg TF_VARIANT=$(TF_VARIANT) -t $(IMAGE) .

# Kubernetes manifest linters (tests/test_k8s.py) live in a venv of their own inside $(VENV):
# checkov's pins (packaging, termcolor) would downgrade the runtime's.
DEPLOY_VENV := $(VENV)/deploy-tools

.PHONY: setup-deploy k8s-render

$(DEPLOY_VENV)/.installed: requirements-deploy.txt
	test -x $(DEPLOY_VENV)/bin/python || $(PYTHON) -m venv $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/python -m pip --disable-pip-version-check -q install -r requirements-deploy.txt
	touch $@

setup-deploy: $(DEPLOY_VENV)/.installed  ## checkov + kubernetes-validate for tests/test_k8s.py

k8s-render:  ## regenerate deploy/k8s files derived from deploy/prometheus and deploy/tfserving
	$(PY) deploy/k8s/render.py
