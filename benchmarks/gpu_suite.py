"""The one command a session with a lent GPU runs: CUDA tests in bf16/fp16, then the benchmarks.

    python -m benchmarks.gpu_suite OUT_DIR [--csv PATH] [--budget-s 480] [--dry-run]

Every benchmark appends its rows to one results CSV (--csv, default OUT_DIR/results.csv) after every
case; OUT_DIR also gets the test log, a log and a results.md per benchmark, and summary.md (the table
printed last). After the tests the depthwise conv kernels are tuned on this GPU (kernels/tuned/<gpu>.json, used by every
benchmark after it). The benchmarks run most wanted first (the ops, the S/B train step with every baseline at
batch 2 and 1, the S/B forward, then M/L) so a short budget trims the least wanted. Missing pieces (no
CUDA, no Triton, no C++ extension, no MONAI) are skipped with a line that says so. --dry-run (or no CUDA)
only reports what would run and be skipped, each step's time slot and an estimate of its cells' time.
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

# Run in this order, most wanted first (issue 20): the ops, then the S/B train step at batch 2 with every
# baseline a user would pick in the same run (so "vs best baseline" compares within one run), the same at
# batch 1, the S/B forward, then M/L; last the block micro-benchmark and checkpointing. Each gets
# weight / (weights still to run) of the time left, so time a step leaves unused rolls on to the next, and
# a run stops starting cases at 80 % of its slot (S before B, k3 before k5 before k7).
# (name, weight, arguments of benchmarks.run)
ALL_BASELINES = "eager,eager_cudnn,eager_cl3d_cudnn,monai,triton"
COMPILED = "eager,eager_cudnn,compile,triton,triton_compile"  # compile times (~1 min a case) keep this to k3
BENCHMARKS = [
    ("ops", 0.04, ["--suite", "ops", "--kernels", "3,5,7", "--levels", "0,2,4", "--columns", "eager,triton"]),
    ("train", 0.30, ["--suite", "train", "--variants", "S,B", "--kernels", "3,5,7", "--checkpointing", "off",
                     "--batch", "2", "--columns", ALL_BASELINES]),
    ("compile", 0.30, ["--suite", "train,model", "--variants", "S,B", "--kernels", "3", "--checkpointing", "off",
                       "--batch", "2", "--columns", COMPILED]),
    ("train_b1", 0.22, ["--suite", "train", "--variants", "S,B", "--kernels", "3,5,7", "--checkpointing", "off",
                        "--batch", "1", "--columns", ALL_BASELINES]),
    ("model", 0.16, ["--suite", "model", "--variants", "S,B", "--kernels", "3,5,7", "--batch", "2",
                     "--columns", ALL_BASELINES]),
    ("train_ml", 0.12, ["--suite", "train", "--variants", "M,L", "--kernels", "3,5,7", "--checkpointing", "off",
                        "--batch", "2", "--columns", "eager,eager_cudnn,monai,triton"]),
    ("train_ckpt", 0.04, ["--suite", "train", "--variants", "S,B", "--kernels", "3,5,7", "--checkpointing", "on",
                          "--batch", "2", "--columns", "eager,eager_cudnn,triton"]),
]
# The fused-block micro-benchmark (saved-for-backward memory, per-op roofline), its own module; after M/L.
BLOCK_FUSED = ("block_fused", 0.06,
               ["--quick", "--columns", "triton,triton_cl,eager,eager_cl,triton_dw,triton_mlp"])
TEST_SHARE = 0.2  # of the whole budget, for the CUDA tests (spread over 8 pytest-xdist workers)
# Then the depthwise conv kernels are tuned on this GPU (most expensive launches first) into
# kernels/tuned/<gpu>.json, which every benchmark after it uses; gpu_suite.sh copies it to OUT to commit.
TUNE_SHARE = 0.12
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


def tune_command(python: str, budget_s: float) -> list:
    return [python, "-m", "mednext_fast.kernels.tune", "--kernels", "3,5,7", "--dtype", "bf16",
            "--budget-s", f"{budget_s:.0f}"]


def steps() -> list:
    """(name, weight, command without --out/--budget-s) in running order."""
    python = sys.executable
    plan_ = [(name, weight, [python, "-m", "benchmarks.run", "--device", "cuda", "--min-time", "0.5", *extra])
             for name, weight, extra in BENCHMARKS]
    name, weight, extra = BLOCK_FUSED
    plan_.insert(len(plan_) - 1, (name, weight, [python, "-m", "benchmarks.bench_block_gpu", *extra]))
    return plan_


# Estimates for the dry run, per cell (seconds): a column's median from the latest H200 rows of the
# results CSV where it was measured, else these factors on the eager median (batch 1: half of batch 2),
# times (MIN_RUNS timed runs + the warm-up), plus the first call's compile where one is expected.
MIN_RUNS, BUILD_S = 3, 2.0
GUESS = {"eager_cudnn": 1.0, "eager_cl3d_cudnn": 2.0, "compile": 0.8, "monai": 1.0, "triton_compile": 0.2}
COMPILE_S = {("train", "compile"): 90.0, ("train", "triton_compile"): 60.0, ("model", "compile"): 35.0,
             ("model", "triton_compile"): 25.0}
DEFAULT_CELL_MS = {"train": 1000.0, "model": 150.0, "ops": 5.0}


def _option(cmd: list, name: str, default: str) -> str:
    return cmd[cmd.index(name) + 1] if name in cmd else default


def estimate_s(cmd: list, rows: list) -> float:
    """Estimated seconds of one benchmarks.run step (see GUESS); 60 s for other modules."""
    if "benchmarks.run" not in cmd:
        return 60.0
    suites = _option(cmd, "--suite", "model").split(",")
    variants = _option(cmd, "--variants", "S,B,M,L").split(",")
    kernels = [int(k) for k in _option(cmd, "--kernels", "3,5,7").split(",")]
    columns = _option(cmd, "--columns", "eager").split(",")
    batch = int(_option(cmd, "--batch", "2"))
    levels = len(_option(cmd, "--levels", "0,1,2,3,4").split(","))
    known = {}
    for row in rows:  # the latest H200-class CUDA medians at batch 2, 128^3, bf16
        if row.get("device") == "cuda" and row.get("median_ms") and row.get("batch") == 2 \
                and row.get("size") in (None, 128) and row.get("dtype") == "bf16" and row.get("suite") != "ops":
            known[(row["suite"], row.get("variant"), row.get("kernel"), row["column"])] = row["median_ms"]
    total = 0.0
    for suite in suites:
        if suite == "ops":
            total += len(kernels) * levels * len(columns) * (0.3 + 5 * DEFAULT_CELL_MS["ops"] / 1e3)
            continue
        for variant in variants:
            for kernel in kernels:
                eager = known.get((suite, variant, kernel, "eager"), DEFAULT_CELL_MS[suite])
                for column in columns:
                    ms = known.get((suite, variant, kernel, column), eager * GUESS.get(column, 1.0))
                    ms *= 0.5 if batch == 1 else 1.0
                    total += BUILD_S + (MIN_RUNS + 1) * ms / 1e3 + COMPILE_S.get((suite, column), 0.0)
    return total


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
        tune_s = TUNE_SHARE * args.budget_s
        print(f"[gpu_suite] would tune the conv kernels for at most {tune_s:.0f} s: "
              f"{' '.join(tune_command('python', 0.8 * tune_s))}")
        rows = store.read()
        left, todo, total = args.budget_s - test_s - tune_s, steps(), test_s + tune_s
        while todo:
            name, weight, cmd = todo.pop(0)
            slot = (left - 10) * weight / (weight + sum(w for _, w, _ in todo))
            need = estimate_s(cmd, rows)
            used = min(need, slot)
            left -= used
            total += used
            print(f"[gpu_suite] would run {name} (weight {weight}, slot {slot:.0f} s, est. {need:.0f} s for all "
                  f"its cells{'' if need <= slot else ': the later cases are cut'}): {' '.join(cmd[1:])}")
        print(f"[gpu_suite] estimated wall time {total:.0f} s of the {args.budget_s:.0f} s budget (plus the install "
              "and Triton compiles of the first calls)")
        return 0
    start = time.time()
    if found["triton"]:
        log = os.path.join(args.out, "tests.log")
        code = run(test_command(sys.executable), log, test_s)
        print(f"[gpu_suite] CUDA tests exit code {code} (log: {log})")
        with open(log) as handle:
            print("".join(handle.readlines()[-25:]), flush=True)
    if found["triton"]:
        tune_s = TUNE_SHARE * args.budget_s
        log = os.path.join(args.out, "tune.log")
        code = run(tune_command(sys.executable, 0.8 * tune_s), log, tune_s)
        print(f"[gpu_suite] tuning exit code {code} (log: {log})", flush=True)
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
