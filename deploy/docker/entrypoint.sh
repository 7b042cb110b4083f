#!/bin/sh
# Container entry point. `exec` makes Gunicorn PID 1, so the SIGTERM that `docker stop`, Compose
# or the kubelet sends reaches its arbiter: it stops accepting, lets each worker finish its
# in-flight requests and drain its batcher (SERVING_GRACEFUL_TIMEOUT_S), then exits 0.
# Arguments starting with '-' are extra Gunicorn options; anything else runs instead.
set -eu
if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then
  exec gunicorn -c python:service.gunicorn_conf "service.app:create_app()" "$@"
fi
exec "$@"
