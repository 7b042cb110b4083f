# CPE serving API: Debian bookworm's CPython 3.11, Gunicorn, TensorFlow (CPU or GPU wheels).
#   make wheelhouse && podman build --format docker -t cpe-serving:cpu .          # CPU (default)
#   make wheelhouse TF_VARIANT=gpu && podman build --format docker \
#        --build-arg TF_VARIANT=gpu -t cpe-serving:gpu .                            # tensorflow[and-cuda]
# Offline: Python packages come only from ./wheelhouse (`make wheelhouse`), never from PyPI;
# only Debian's python3 comes from apt. `--format docker` keeps the HEALTHCHECK under podman.
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS builder
ARG TF_VARIANT=cpu
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv binutils \
 && rm -rf /var/lib/apt/lists/*
COPY requirements.txt requirements.lock requirements-nodeps.lock deploy/docker/requirements.sh /src/
# The wheelhouse is bind-mounted, not copied: its 350 MB (several GB for GPU) never land in a layer.
# NOTE: C++ headers (290 MB) and libclang (TF's build-time dependency) are never used to serve;
# TensorFlow's two core libraries ship their static symbol tables (~200 MB; the dynamic symbols
# that loading and custom ops need stay); pip goes too, so nothing installs at run time.
# Only TensorFlow's own libraries are stripped: strip can corrupt auditwheel/patchelf'ed ones.
# One step where the package index is reachable: with no wheels in wheelhouse/ (a clean clone
# holds only its README), pip installs the same hash-pinned set from the index. Air-gapped
# builds fill wheelhouse/ first (`make wheelhouse`) and install from it alone.
WORKDIR /src
# hadolint ignore=SC2086
RUN --mount=type=bind,source=wheelhouse,target=/wheelhouse \
    sh requirements.sh "${TF_VARIANT}" > /src/requirements-variant.txt \
 && if ls /wheelhouse/*.whl >/dev/null 2>&1; then FROM_WHEELS="--no-index --find-links /wheelhouse"; \
    else FROM_WHEELS=""; fi \
 && python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir $FROM_WHEELS -r /src/requirements-variant.txt \
 && /opt/venv/bin/pip install --no-cache-dir $FROM_WHEELS --no-deps -r /src/requirements-nodeps.lock \
 && /opt/venv/bin/pip uninstall -q -y libclang \
 && rm -rf /opt/venv/lib/python3.11/site-packages/tensorflow/include \
 && strip --strip-unneeded /opt/venv/lib/python3.11/site-packages/tensorflow/libtensorflow_*.so.2 \
 && /opt/venv/bin/pip uninstall -q -y pip

FROM ${BASE_IMAGE} AS runtime
ARG TF_VARIANT=cpu
# The commit the image was built from, for serving_build_info (make image passes it).
ARG GIT_SHA=unknown
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log \
 && groupadd --system --gid 10001 serving \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin serving
COPY --from=builder /opt/venv /opt/venv
COPY deploy/docker/entrypoint.sh /usr/local/bin/entrypoint.sh
COPY service/ /app/service/
# Well names are shared with the lab client: its stdlib-only package, not its dependencies.
COPY client/cpe_client/ /app/cpe_client/
# Baked-in model repository (TF Serving layout); mount a volume over it to serve other models.
COPY model_repository/ /models/

# Only /tmp is written to at run time (Gunicorn's heartbeat files and PROMETHEUS_MULTIPROC_DIR,
# which gunicorn_conf wipes and recreates at start): the container runs with a read-only root
# filesystem and a tmpfs on /tmp (compose `read_only` + `tmpfs`, k8s emptyDir).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TF_CPP_MIN_LOG_LEVEL=2 \
    PORT=8000 \
    SERVING_MODEL_REPOSITORY=/models \
    PROMETHEUS_MULTIPROC_DIR=/tmp/serving-metrics \
    SERVING_GIT_SHA=${GIT_SHA}
WORKDIR /app
USER 10001:10001
EXPOSE 8000
LABEL org.opencontainers.image.title="cpe-serving" \
      org.opencontainers.image.description="REST API for TensorFlow SavedModel CPE image classifiers" \
      io.cpe-serving.tf-variant="${TF_VARIANT}"
# Liveness only (the process answers HTTP): readiness is /readyz, polled by orchestrators.
HEALTHCHECK --interval=15s --timeout=5s --start-period=90s --retries=3 \
  CMD ["python3", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]
