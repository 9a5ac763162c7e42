#!/usr/bin/env bash
# The single command for a session with a lent GPU, run from the repo root on the device machine:
#   [MEDNEXT_FAST_COMMIT=<sha>] bash benchmarks/gpu_suite.sh OUT_DIR [--budget-s 480]
# First installs this source tree into the machine's python as an editable install, without the C++
# extension and without downloading anything (torch, triton, setuptools and wheel are there); wheels found
# in .whl/ (e.g. monai, carried along because the machine has no internet) go into a scratch folder. Then
# the CUDA tests and the benchmarks (benchmarks/gpu_suite.py). OUT_DIR gets results.csv (this run's rows;
# merge them here with `python -m benchmarks.store merge OUT_DIR/results.csv --commit <sha>`),
# summary.md, tests.log, tune.log, the tuned table <gpu>.json (commit it as kernels/tuned/<gpu>.json) and
# gpu_suite.tar.gz (every log and per-benchmark table). MEDNEXT_FAST_COMMIT names the measured commit where
# the copied tree has no .git.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: gpu_suite.sh OUT_DIR [--budget-s N]}
shift
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d)
export PYTHONUNBUFFERED=1
install=(python3 -m pip install -q --no-build-isolation --no-deps -e .)
if ! MEDNEXT_FAST_NO_EXT=1 "${install[@]}"; then
    # A distribution's system python refuses pip outside a virtual environment unless told (PEP 668).
    MEDNEXT_FAST_NO_EXT=1 "${install[@]}" --break-system-packages \
        || { echo "[gpu_suite] the editable install of this tree failed"; exit 1; }
fi
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$work/site" .whl/*.whl \
        && export PYTHONPATH=$work/site${PYTHONPATH:+:$PYTHONPATH} \
        || echo "[gpu_suite] could not install the wheels in .whl/"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>/dev/null
python3 -m benchmarks.gpu_suite "$work/suite" --csv "$out/results.csv" "$@"
status=$?
tar -czf "$out/gpu_suite.tar.gz" -C "$work" suite
cp "$work/suite/summary.md" "$work/suite/tests.log" "$work/suite/tune.log" "$out/" 2>/dev/null
cp kernels/tuned/*.json "$out/" 2>/dev/null  # the tuned table of this GPU: commit it as kernels/tuned/<gpu>.json
exit $status
