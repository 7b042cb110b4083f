# `make run` serves the committed model; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
PORT ?= 8000
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: setup setup-dev run test train bench lint clean

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

train: setup  ## regenerate synthetic data, train and export model_repository/cpe_cnn/1
	$(PY) -m training.train

bench: setup-dev  ## side-by-side throughput/latency table (see README, Performance)
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) .pytest_cache
