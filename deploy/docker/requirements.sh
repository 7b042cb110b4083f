#!/bin/sh
# Print the runtime requirements for one TensorFlow variant, run from a folder holding
# requirements.lock and requirements.txt: `cpu` is the hash-pinned lock (pip then checks every
# wheel's hash); `gpu` swaps tensorflow-cpu for tensorflow[and-cuda] at the same version in
# requirements.txt (CUDA and cuDNN come as pip wheels; no lock: its wheel set is another).
# Shared by `make wheelhouse` and the Dockerfile, so both resolve the same set.
set -eu
case "${1:-cpu}" in
  cpu) cat requirements.lock ;;
  gpu) sed 's/^tensorflow-cpu==/tensorflow[and-cuda]==/' requirements.txt ;;
  *) echo "TF variant must be cpu or gpu, not '$1'" >&2; exit 2 ;;
esac
