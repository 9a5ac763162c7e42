#!/usr/bin/env bash
# The single command for a session with a lent GPU, run from the repo root on the device machine:
#   bash benchmarks/gpu_suite.sh OUT_DIR [--budget-s 480]
# Runs from the source tree (nothing is built there). Wheels found in .whl/ (e.g. monai, carried along
# because the machine has no internet) are installed into a scratch folder first. The suite works in a
# scratch folder and leaves only a few files in OUT_DIR: gpu_suite.tar.gz (everything), summary.md, tests.log.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: gpu_suite.sh OUT_DIR [--budget-s N]}
shift
mkdir -p "$out"
work=$(mktemp -d)
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$work/site" .whl/*.whl \
        && export PYTHONPATH=$PYTHONPATH:$work/site || echo "[gpu_suite] could not install the wheels in .whl/"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>/dev/null
python3 -m benchmarks.gpu_suite "$work/suite" "$@"
status=$?
tar -czf "$out/gpu_suite.tar.gz" -C "$work" suite
cp "$work/suite/summary.md" "$work/suite/tests.log" "$out/" 2>/dev/null
exit $status
