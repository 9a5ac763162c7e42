"""The one command a session with a lent GPU runs: CUDA tests in bf16/fp16, then the benchmarks.

    python -m benchmarks.gpu_suite OUT_DIR [--budget-s 480] [--dry-run]

Everything lands under OUT_DIR (test log, one results folder per benchmark, summary.md); a summary table
is printed last. Missing pieces (no CUDA, no Triton, no C++ extension, no MONAI) are skipped with a line
that says so. --dry-run (or no CUDA) only reports what would run and what would be skipped.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

# (name, share of the benchmark budget, arguments of benchmarks.run)
BENCHMARKS = [
    ("ops", 0.1, ["--suite", "ops", "--kernels", "3,5,7"]),
    ("blocks", 0.15, ["--suite", "blocks", "--variants", "B", "--kernels", "3,5,7", "--levels", "0,1,2"]),
    ("train", 0.4, ["--suite", "train", "--variants", "S,B,M,L", "--kernels", "3,5,7", "--checkpointing", "off,on"]),
    ("model", 0.15, ["--suite", "model", "--variants", "S,B,M,L", "--kernels", "3,5,7"]),
]
# The fused-block micro-benchmark (saved-for-backward memory, per-op roofline), its own script.
BLOCK_FUSED_SHARE = 0.2
TEST_SHARE = 0.2  # of the whole budget, for the CUDA tests


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
    print("$ " + " ".join(cmd), flush=True)
    with open(log_path, "a") as log:
        try:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=max(timeout_s, 10))
            return proc.returncode
        except subprocess.TimeoutExpired:
            log.write(f"\n[gpu_suite] timed out after {timeout_s:.0f} s\n")
            return 124


def summary(out: str) -> str:
    """A short table: speed-up and memory of each column vs eager, per benchmark case."""
    lines = ["| benchmark | case | column | median ms | speed-up vs eager | memory vs eager |", "|---|---|---|---|---|---|"]
    for name, _, _ in BENCHMARKS:
        path = os.path.join(out, name, "results.json")
        if not os.path.exists(path):
            lines.append(f"| {name} | (no results) | | | | |")
            continue
        with open(path) as handle:
            rows = json.load(handle)["results"]
        for row in rows:
            if row["column"] == "eager" or not row.get("median_s"):
                continue
            case = " ".join(f"{k}={row[k]}" for k in ("variant", "kernel", "level", "op", "mode", "checkpointing")
                            if row.get(k) is not None)
            speed = f"{row['speedup_vs_eager']:.2f}x" if row.get("speedup_vs_eager") else ""
            memory = f"{row['memory_vs_eager']:.2f}" if row.get("memory_vs_eager") else ""
            lines.append(f"| {name} | {case} | {row['column']} | {row['median_s'] * 1e3:.2f} | {speed} | {memory} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_suite", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="output folder")
    parser.add_argument("--budget-s", type=float, default=480, help="total wall-clock budget (default: 480)")
    parser.add_argument("--dry-run", action="store_true", help="only report what would run and be skipped")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    found = probe()
    print(f"[gpu_suite] {found}")
    for line in plan(found):
        print(f"[gpu_suite] skip {line}")
    if args.dry_run or not found["cuda"]:
        for name, share, extra in BENCHMARKS:
            print(f"[gpu_suite] would run benchmarks.run {' '.join(extra)} for {share * args.budget_s * (1 - TEST_SHARE):.0f} s")
        print(f"[gpu_suite] would run benchmarks/bench_block_gpu.py --quick for "
              f"{BLOCK_FUSED_SHARE * args.budget_s * (1 - TEST_SHARE):.0f} s")
        print("[gpu_suite] would run the CUDA tests: pytest tests/kernels (bf16/fp16 on CUDA)")
        return 0
    start = time.time()
    env_python = sys.executable
    log = os.path.join(args.out, "tests.log")
    if found["triton"]:
        code = run([env_python, "-m", "pytest", "-q", "-x", "tests/kernels", "tests/test_backends.py"],
                   log, TEST_SHARE * args.budget_s)
        print(f"[gpu_suite] CUDA tests exit code {code} (log: {log})")
    for name, share, extra in BENCHMARKS:
        left = args.budget_s - (time.time() - start)
        slot = min(share * args.budget_s * (1 - TEST_SHARE), left - 15)
        if slot < 20:
            print(f"[gpu_suite] skip {name}: budget spent")
            continue
        cmd = [env_python, "-m", "benchmarks.run", "--device", "cuda", "--out", os.path.join(args.out, name),
               "--budget-s", f"{slot * 0.8:.0f}", "--min-time", "0.5"] + extra
        code = run(cmd, os.path.join(args.out, f"{name}.log"), slot + 60)
        print(f"[gpu_suite] {name}: exit code {code}")
    slot = min(BLOCK_FUSED_SHARE * args.budget_s * (1 - TEST_SHARE), args.budget_s - (time.time() - start) - 15)
    if found["triton"] and slot >= 20:
        cmd = [env_python, "benchmarks/bench_block_gpu.py", "--quick", "--budget-s", f"{slot * 0.8:.0f}",
               "--out", os.path.join(args.out, "block_fused")]
        code = run(cmd, os.path.join(args.out, "block_fused.log"), slot + 60)
        print(f"[gpu_suite] block_fused: exit code {code}")
    else:
        print("[gpu_suite] skip block_fused: no triton or budget spent")
    table = summary(args.out)
    with open(os.path.join(args.out, "summary.md"), "w") as handle:
        handle.write(f"# GPU suite on {found['device']}\n\n{json.dumps(found)}\n\n{table}\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
