#!/usr/bin/env bash
# The GPU check of issue 25 (python -m facebench.benchmarks.perf.gpu_check) on a machine with a GPU
# and no network: installs this checkout without dependencies into the image's Python (torch,
# lightning, timm, torchmetrics and pandas must be there already), then runs the check with W&B off.
# Arguments are passed on, e.g.  benchmarks/perf/gpu_check.sh --celeba-root /data/celeba_subset --out gpu_check.csv
# Without a GPU the check prints one line and exits 69 (--cpu-smoke runs it on the CPU instead).
#
# pip builds with the setuptools already installed (--no-build-isolation: no download); it needs
# setuptools >= 77 (pyproject.toml). Where that fails, the layer folders are linked into a temporary
# `facebench` package on PYTHONPATH instead (the mapping pyproject.toml's package-dir declares).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
PYTHON="${PYTHON:-python3}"
if ! (cd "$REPO" && "$PYTHON" -m pip install --quiet --no-deps --no-build-isolation -e . >/dev/null 2>&1); then
  SHIM="$(mktemp -d)"
  trap 'rm -rf "$SHIM"' EXIT
  mkdir "$SHIM/facebench"
  for entry in "$REPO"/facebench/*; do ln -s "$entry" "$SHIM/facebench/"; done
  for layer in benchmarks datamodules lightning_modules; do ln -s "$REPO/$layer" "$SHIM/facebench/$layer"; done
  export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
  echo "[facebench] gpu_check.sh: pip could not install facebench offline; using the checkout through $SHIM" >&2
fi
export FACEBENCH_WANDB=0 WANDB_MODE=disabled
"$PYTHON" -m facebench.benchmarks.perf.gpu_check "$@"
