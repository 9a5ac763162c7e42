#!/usr/bin/env bash
# One command on a fresh machine: create .venv (CPU torch 2.13.0, this package with its C++ extension,
# the test tools), then run the main job. `bash setup.sh --no-run` only sets up.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
fi
. .venv/bin/activate
# The embedded real dataset (Colin27 brain, AAL atlas) ships in Debian's mricron-data; without it the
# main job falls back to synthetic data.
if ! dpkg -s mricron-data >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        (apt-get update -qq && apt-get install -y -qq mricron-data >/dev/null) \
            || echo "note: mricron-data could not be installed; the Colin27 dataset is unavailable"
    else
        echo "note: for the Colin27 dataset run: sudo apt-get install mricron-data"
    fi
fi
# Pinned: an unpinned torch resolves to a multi-GB CUDA build on these machines.
pip install -q "torch==${TORCH_VERSION:-2.13.0}"
# torch pinned again: a test tool's dependency (nnunetv2, monai) must not replace it.
pip install -q -r requirements-dev.txt "torch==${TORCH_VERSION:-2.13.0}"
# No build isolation: the extension must compile against the torch installed above.
pip install -q --no-build-isolation -e .
if [ "${1:-}" != "--no-run" ]; then
    # The main job: train MedNeXt on the embedded dataset with the CPU demo preset (a few minutes).
    python train/run.py
fi
