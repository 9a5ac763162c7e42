"""The one command a session with a lent GPU runs: CUDA tests in bf16/fp16, then the benchmarks.

    python -m benchmarks.gpu_suite OUT_DIR [--csv PATH] [--budget-s 480] [--dry-run]

Every benchmark appends its rows to one results CSV (--csv, default OUT_DIR/results.csv); OUT_DIR also
gets the test log, a log and a results.md per benchmark, and summary.md (the table printed last). The
benchmarks run most wanted first (train steps of S/B, then the forward of every variant, ...) so a short
budget trims the least wanted. Missing pieces (no CUDA, no Triton, no C++ extension, no MONAI) are
skipped with a line that says so. --dry-run (or no CUDA) only reports what would run and be skipped.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

from benchmarks import report, store

# Run in this order, most wanted first; each gets weight / (weights still to run) of the time left, so
# time one step leaves unused rolls on to the next. (name, weight, arguments of benchmarks.run)
BENCHMARKS = [
    ("train", 0.25, ["--suite", "train", "--variants", "S,B", "--kernels", "3,5,7", "--checkpointing", "off",
                     "--columns", "eager,monai,triton"]),
    ("model", 0.15, ["--suite", "model", "--variants", "S,B,M,L", "--kernels", "3,5,7",
                     "--columns", "eager,eager_cl3d,monai,triton"]),
    ("train_ml", 0.15, ["--suite", "train", "--variants", "M,L", "--kernels", "3,5,7", "--checkpointing", "off",
                        "--columns", "eager,monai,triton"]),
    ("train_ckpt", 0.08, ["--suite", "train", "--variants", "S,B", "--kernels", "3,5,7", "--checkpointing", "on",
                          "--columns", "eager,triton"]),
    ("ops", 0.07, ["--suite", "ops", "--kernels", "3,5,7", "--levels", "0,2,4", "--columns", "eager,triton"]),
    ("compile", 0.18, ["--suite", "model,train", "--variants", "B", "--kernels", "3,5", "--checkpointing", "off",
                       "--columns", "eager,compile,triton"]),
]
# The fused-block micro-benchmark (saved-for-backward memory, per-op roofline), its own module; between
# ops and compile, which is last because its compile times are the least predictable.
BLOCK_FUSED = ("block_fused", 0.12,
               ["--quick", "--columns", "triton,triton_cl,eager,eager_cl,triton_dw,triton_mlp"])
TEST_SHARE = 0.27  # of the whole budget, for the CUDA tests (spread over 8 pytest-xdist workers)
TESTS = ["tests/kernels", "tests/test_backends.py", "tests/test_accelerate.py"]


def probe() -> dict:
    """What this machine has; each missing piece with the reason it matters."""
    import torch
    found = dict(cuda=torch.cuda.is_available(), torch=torch.__version__)
    found["device"] = torch.cuda.get_device_name() if found["cuda"] else "no CUDA device"
    try:
        import triton
        found["triton"] = triton.__version__
    except ImportError:
        found["triton"] = None
    try:
        import monai
        found["monai"] = monai.__version__
    except ImportError:
        found["monai"] = None
    from mednext_fast import backends
    found["cpp_extension"] = backends.is_available("cpp")
    return found


def plan(found: dict) -> list:
    skips = []
    if not found["cuda"]:
        skips.append("everything: no CUDA device visible (dry run)")
    if not found["triton"]:
        skips.append("triton column and CUDA kernel tests: triton is not installed")
    if not found["monai"]:
        skips.append("monai column: monai is not installed (carry its pure-Python wheel to include it)")
    if not found["cpp_extension"]:
        skips.append("cpp column: the C++ extension is not built (CPU-only backend; not needed on GPU)")
    return skips


def run(cmd: list, log_path: str, timeout_s: float) -> int:
    """Run cmd with its output in log_path. At the time limit it gets SIGINT first, so pytest still prints
    its failure summary and benchmarks keep what they wrote; SIGKILL 20 s later."""
    print("$ " + " ".join(cmd), flush=True)
    with open(log_path, "a") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            return proc.wait(timeout=max(timeout_s, 10))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.write(f"\n[gpu_suite] stopped after {timeout_s:.0f} s\n")
            return 124


def test_command(python: str) -> list:
    """The CUDA tests, spread over a few processes (Triton compiles dominate) when pytest-xdist is there."""
    cmd = [python, "-m", "pytest", "-v", "-rfE", "--tb=short", "-p", "no:cacheprovider", *TESTS,
           "--deselect", "tests/kernels/test_sm90_compile.py"]
    if importlib.util.find_spec("xdist"):
        cmd += ["-n", "8"]
    if importlib.util.find_spec("pytest_timeout"):
        cmd += ["--timeout", "100"]
    return cmd


def steps() -> list:
    """(name, weight, command without --out/--budget-s) in running order."""
    python = sys.executable
    plan_ = [(name, weight, [python, "-m", "benchmarks.run", "--device", "cuda", "--min-time", "0.5", *extra])
             for name, weight, extra in BENCHMARKS]
    name, weight, extra = BLOCK_FUSED
    plan_.insert(len(plan_) - 1, (name, weight, [python, "-m", "benchmarks.bench_block_gpu", *extra]))
    return plan_


def summary(csv_path: str) -> str:
    """Every row the suite wrote, a table per suite with the speed-up vs eager of the same run and case."""
    rows = store.read(csv_path)
    return report.grid(rows) if rows else "(no results)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_suite", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="output folder")
    parser.add_argument("--csv", default=None, help="results CSV to append to (default: OUT/results.csv)")
    parser.add_argument("--budget-s", type=float, default=480, help="total wall-clock budget (default: 480)")
    parser.add_argument("--dry-run", action="store_true", help="only report what would run and be skipped")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    csv_path = args.csv or os.path.join(args.out, "results.csv")
    found = probe()
    print(f"[gpu_suite] {found}")
    for line in plan(found):
        print(f"[gpu_suite] skip {line}")
    test_s = TEST_SHARE * args.budget_s
    if args.dry_run or not found["cuda"]:
        print(f"[gpu_suite] would run the CUDA tests for at most {test_s:.0f} s: {' '.join(test_command('python'))}")
        for name, weight, cmd in steps():
            print(f"[gpu_suite] would run {name} (weight {weight}): {' '.join(cmd[1:])}")
        return 0
    start = time.time()
    if found["triton"]:
        log = os.path.join(args.out, "tests.log")
        code = run(test_command(sys.executable), log, test_s)
        print(f"[gpu_suite] CUDA tests exit code {code} (log: {log})")
        with open(log) as handle:
            print("".join(handle.readlines()[-25:]), flush=True)
    todo = steps()
    while todo:
        name, weight, cmd = todo.pop(0)
        left = args.budget_s - (time.time() - start) - 10
        slot = left * weight / (weight + sum(w for _, w, _ in todo))
        if slot < 20:
            print(f"[gpu_suite] skip {name}: budget spent")
            continue
        if name == BLOCK_FUSED[0] and not found["triton"]:
            print(f"[gpu_suite] skip {name}: no triton")
            continue
        # The runner stops starting cells at 80 % of the slot; the kill at the slot's end keeps the
        # rows written so far (every benchmark appends to the CSV after each case).
        cmd = cmd + ["--csv", csv_path, "--out", os.path.join(args.out, name), "--budget-s", f"{slot * 0.8:.0f}"]
        code = run(cmd, os.path.join(args.out, f"{name}.log"), slot)
        print(f"[gpu_suite] {name}: exit code {code} after {time.time() - start:.0f} s", flush=True)
    table = summary(csv_path)
    with open(os.path.join(args.out, "summary.md"), "w") as handle:
        handle.write(f"# GPU suite on {found['device']}\n\n{json.dumps(found)}\n\n{table}\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
