# `make run` serves the committed model; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
PORT ?= 8000
# Loopback unless told otherwise (HOST=0.0.0.0 make run): the API has no key until one is set.
HOST ?= 127.0.0.1
export TF_CPP_MIN_LOG_LEVEL ?= 2
# oneDNN's CPU kernels for every TensorFlow process make starts (training, tests, benchmarks), as
# the service's workers get them (service/gunicorn_conf.py): stock TensorFlow turns them on only
# on CPUs with VNNI or AMX; on an AVX2 CPU the paper CNN's convolutions are 4-8x slower without.
export TF_ENABLE_ONEDNN_OPTS ?= 1

.PHONY: setup setup-dev run test train train-lofo train-seeds bench bench-venv fuzz fuzz-api fuzz-decoders clean

# The service shares the client's well names (cpe_client.wells, stdlib only): the client package
# is installed without its own dependencies (httpx, matplotlib) into the runtime.
# The runtime installs from the hash-pinned locks (`make lock` regenerates them from the .txt files).
$(VENV)/.runtime: requirements.lock requirements-nodeps.lock client/pyproject.toml client/cpe_client/wells.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --require-hashes -r requirements.lock
	$(PIP) install --require-hashes --no-deps -r requirements-nodeps.lock
	$(PIP) install --no-deps ./client
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt requirements-testdata.txt client/pyproject.toml
	$(PIP) install -r requirements-dev.txt
	$(PIP) install --no-deps -r requirements-testdata.txt
	touch $@

setup: $(VENV)/.runtime
setup-dev: $(VENV)/.dev

run: setup  ## serve model_repository/ on $(HOST):$(PORT)
	SERVING_HOST=$(HOST) PORT=$(PORT) $(VENV)/bin/gunicorn -c python:service.gunicorn_conf "service.app:create_app()"

test: setup-dev  ## the whole suite, as CI runs it
	$(PY) -m pytest -q

train: setup-dev  ## regenerate synthetic data (generator v2), train, gate and export model_repository/cpe_cnn/2
	$(PY) -m training.train

# The reduced background runs the card quotes (each a few trainings); niced, as they share the
# machine. LOFO_ARGS='--hold-out v1,faint --merge' adds folds to the committed table.
NICE ?= nice -n 19
train-lofo: setup-dev  ## leave-one-family-out validation of the recipe -> training/results/lofo.{json,md}
	$(NICE) $(PY) -m training.lofo $(LOFO_ARGS)

train-seeds: setup-dev  ## the recipe from three init seeds, plateau escape and spread -> training/results/seeds.{json,md}
	$(NICE) $(PY) -m training.seeds $(SEEDS_ARGS)

# The peers (naive Flask under Gunicorn, Ray Serve) and py-spy live in a venv of their own, never the
# service's: the service's hash-pinned runtime (the same tensorflow-cpu) plus bench/requirements.txt,
# resolved with the runtime's pins as constraints so nothing they share moves.
BENCH_VENV ?= .venv-bench
$(BENCH_VENV)/.installed: requirements.lock bench/requirements.txt
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip --disable-pip-version-check -q install --require-hashes -r requirements.lock
	grep -E '^[A-Za-z0-9_.-]+==' requirements.lock | sed 's/ *\\$$//' > $(BENCH_VENV)/constraints.txt
	$(BENCH_VENV)/bin/python -m pip --disable-pip-version-check -q install -r bench/requirements.txt \
		-c $(BENCH_VENV)/constraints.txt
	touch $@

bench-venv: $(BENCH_VENV)/.installed  ## the peers' venv for `make bench` (Ray Serve, py-spy)

# wrk (the cross-check load generator) is a Debian package: `apt-get install wrk`; without it the
# report leaves the wrk columns empty and says so. BENCH_QUICK=1: the smoke run (11 min on a busy box).
bench: setup-dev bench-venv  ## peers side by side, wrk cross-check, CPU by stage (~22 min), then the cost of explanations (~3 min; bench/README.md)
	@command -v wrk >/dev/null || echo "note: wrk not installed (apt-get install wrk): no wrk cross-check"
	BENCH_PYTHON=$(abspath $(BENCH_VENV))/bin/python $(PY) -m bench.run $(if $(BENCH_QUICK),--quick) $(BENCH_ARGS)
	$(PY) -m bench.explain

fuzz-api: setup-dev  ## schemathesis: >= 2,000 generated requests against Gunicorn, 0 5xx
	$(PY) -m fuzz.api --cases 2000

# Coverage-guided fuzzing of decode_image (fuzz/decoders.py): FUZZ_RUNS executions or FUZZ_TIME_S
# seconds, whichever comes first; each input is killed after 5 s or 2 GiB RSS (hang/OOM).
# Crashes land in $(FUZZ_DIR)/crash-*: copy them to tests/hostile/fuzz-<what>.bin, where the
# suite decodes them and expects a fast 4xx.
FUZZ_RUNS ?= 200000
FUZZ_DIR ?= /tmp/cpe-fuzz
FUZZ_TIME_S ?= 600
fuzz-decoders: setup-dev  ## fuzz the image decoders (atheris), seeds generated into $(FUZZ_DIR)/corpus
	mkdir -p $(FUZZ_DIR)/corpus
	$(PY) -m fuzz.decoders $(FUZZ_DIR)/corpus -atheris_runs=$(FUZZ_RUNS) -timeout=5 \
		-rss_limit_mb=2048 -max_len=65536 -max_total_time=$(FUZZ_TIME_S) \
		-artifact_prefix=$(FUZZ_DIR)/ -print_final_stats=1

fuzz: fuzz-decoders fuzz-api  ## both campaigns: the decoders (atheris) and the API (schemathesis)

.PHONY: harden
harden: setup-dev  ## overload, SIGTERM/SIGKILL, stalled uploads, hostile files, soak (~18 min; bench/README.md)
	$(PY) -m bench.harden $(HARDEN_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache

# --- supply chain ----------------------------------------------------------------------------
# requirements*.txt name what the service needs; the locks pin every transitive wheel by hash for
# Linux x86_64 / CPython 3.11 (the image's). uv and pip-audit run from a tool venv of their own.
LOCK_TOOLS := $(VENV)/lock-tools
UV_COMPILE := $(LOCK_TOOLS)/bin/uv pip compile --generate-hashes --no-header --python-version 3.11 \
	--python-platform x86_64-manylinux_2_28

.PHONY: lock audit

$(LOCK_TOOLS)/.installed:
	test -x $(LOCK_TOOLS)/bin/python || $(PYTHON) -m venv $(LOCK_TOOLS)
	$(LOCK_TOOLS)/bin/python -m pip --disable-pip-version-check -q install uv==0.13.9 pip-audit==2.10.1
	touch $@

lock: $(LOCK_TOOLS)/.installed  ## re-resolve requirements.lock and requirements-nodeps.lock
	$(UV_COMPILE) requirements.txt -o requirements.lock
	$(UV_COMPILE) --no-deps requirements-nodeps.txt -o requirements-nodeps.lock

audit: $(LOCK_TOOLS)/.installed  ## known vulnerabilities in the locked runtime (pip-audit)
	$(LOCK_TOOLS)/bin/pip-audit --strict --disable-pip --no-deps -r requirements.lock -r requirements-nodeps.lock

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

wheelhouse/.$(TF_VARIANT): requirements.lock requirements-nodeps.lock deploy/docker/requirements.sh
	mkdir -p wheelhouse
	sh deploy/docker/requirements.sh $(TF_VARIANT) | $(PIP_DOWNLOAD) -r /dev/stdin
	$(PIP_DOWNLOAD) --no-deps -r requirements-nodeps.lock
	touch $@

wheelhouse: wheelhouse/.$(TF_VARIANT)  ## wheels for the image (TF_VARIANT=cpu|gpu)

# podman writes OCI images by default, which drop the HEALTHCHECK: ask for Docker's format.
IMAGE_FORMAT := $(if $(filter podman,$(notdir $(CONTAINER_ENGINE))),--format docker)

image: wheelhouse  ## build $(IMAGE) from the wheelhouse, offline
	$(CONTAINER_ENGINE) build $(IMAGE_FORMAT) --build-arg TF_VARIANT=$(TF_VARIANT) \
		--build-arg GIT_SHA=$$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown) -t $(IMAGE) .

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
