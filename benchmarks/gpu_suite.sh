#!/usr/bin/env bash
# The single command for a session with a lent GPU, run from the repo root on the device machine:
#   bash benchmarks/gpu_suite.sh "$OUT" [--budget-s 480]
# Runs from the source tree (nothing is built there), then packs the results into one archive.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: gpu_suite.sh OUT_DIR [--budget-s N]}
shift
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
python3 -m benchmarks.gpu_suite "$out/suite" "$@"
status=$?
tar -czf "$out/gpu_suite.tar.gz" -C "$out" suite && cp "$out/suite/summary.md" "$out/" 2>/dev/null
exit $status
