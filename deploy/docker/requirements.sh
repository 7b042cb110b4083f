#!/bin/sh
# Print requirements.txt (stdin) for one TensorFlow variant: `cpu` keeps tensorflow-cpu, `gpu`
# swaps it for tensorflow[and-cuda] at the same version (CUDA and cuDNN come as pip wheels).
# Shared by `make wheelhouse` and the Dockerfile, so both resolve the same set.
set -eu
case "${1:-cpu}" in
  cpu) cat ;;
  gpu) sed 's/^tensorflow-cpu==/tensorflow[and-cuda]==/' ;;
  *) echo "TF variant must be cpu or gpu, not '$1'" >&2; exit 2 ;;
esac
