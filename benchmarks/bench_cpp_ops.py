"""Benchmark the C++ ops (mednext_fast.backends.cpp) against the PyTorch references, in one run.

    python -m benchmarks.bench_cpp_ops                 # 1x32x64^3, k3/k5/k7, norm_mlp R=2/4, 2 threads
    python -m benchmarks.bench_cpp_ops --size 128 --threads 2 --modes stride1,stride2,transposed
    python -m benchmarks.bench_cpp_ops --skip dwconv --channels 128 --size 16 --ratios 2 8   # wide layers

Columns: "eager" / "eager_cl3d" run mednext_fast.ops (the reference: F.conv3d + fp32 sums; group-norm
apply + two 1x1x1 convs + GELU) on NCDHW / channels_last_3d tensors; "cpp" runs the C++ op on
channels_last_3d inputs (the layout the model keeps); "cpp_out" the same into an existing output tensor
(what the model does for the stage blocks after the first: no fresh allocation and so no first-touch page
faults); "cpp_ncdhw" on NCDHW inputs (includes the layout copy); "cpp_gemm" is norm_mlp with the fused
narrow-layer MLP turned off (ATen GEMM tiles); "cpp_bf16" with bf16_gemms=True (wide layers' GEMMs in
bf16; shown where the CPU has native bf16; narrow layers ignore it).
Speed-up = eager time / cpp time, measured in the same process: medians, the columns of an op timed in
alternating rounds (benchmarks.measure), on --threads threads. GFLOP/s count useful multiply-adds only
(taps on the zero padding are left out); "% of peak" divides the "cpp" (and "cpp_out") GFLOP/s by the
fp32 FMA peak of the same threads measured at start (_C.fma_peak_gflops).
Rows go to the results CSV (--csv, suite "cpp_ops"); the table is printed.
"""
from __future__ import annotations

import argparse
import sys

import torch

from benchmarks import device_info, report, store
from benchmarks.measure import measure_interleaved
from mednext_fast import ops
from mednext_fast.backends import cpp

CL = torch.channels_last_3d
MODES = {"stride1": (1, False), "stride2": (2, False), "transposed": (2, True)}
COLUMNS = ("eager", "eager_cl3d", "cpp", "cpp_out", "cpp_ncdhw", "cpp_gemm", "cpp_bf16")


def timed(fns, min_time):
    """Median, IQR and runs of each column, the columns timed in alternating rounds (a slow stretch of the
    shared VM then hits every column alike instead of one column's block of runs)."""
    stats = measure_interleaved(fns, "cpu", min_time_s=min_time, max_runs=200)
    for name, st in stats.items():
        if isinstance(st, Exception):
            raise st
    return stats


def useful_taps(n_in, k, stride, transposed):
    """Sum over the outputs along one dimension of the taps that hit the input (padding excluded)."""
    pad, total = k // 2, 0
    n_out = (n_in - 1) * 2 - 2 * pad + k if transposed else (n_in + 2 * pad - k) // stride + 1
    for o in range(n_out):
        if transposed:  # o = 2 i - pad + t
            total += sum(1 for t in range(k) if (o + pad - t) % 2 == 0 and 0 <= (o + pad - t) // 2 < n_in)
        else:  # i = o * stride - pad + t
            total += sum(1 for t in range(k) if 0 <= o * stride - pad + t < n_in)
    return total


def bench_dwconv(args, rows):
    for mode in args.modes.split(","):
        stride, transposed = MODES[mode]
        for k in args.kernels:
            x = torch.randn(1, args.channels, *(3 * [args.size]))
            w = torch.randn(args.channels, 1, k, k, k)
            b = torch.randn(args.channels)
            xc = x.contiguous(memory_format=CL)
            out = torch.empty_like(cpp.dwconv_stats(xc, w, b, stride, transposed)[0])
            flop = 2 * args.channels * useful_taps(args.size, k, stride, transposed) ** 3
            t = timed({
                "eager": lambda: ops.dwconv_stats(x, w, b, stride, transposed),
                "eager_cl3d": lambda: ops.dwconv_stats(xc, w, b, stride, transposed),
                "cpp": lambda: cpp.dwconv_stats(xc, w, b, stride, transposed),
                "cpp_out": lambda: cpp.dwconv_stats(xc, w, b, stride, transposed, out=out),
                "cpp_ncdhw": lambda: cpp.dwconv_stats(x, w, b, stride, transposed),
            }, args.min_time)
            rows.append((dict(op="dwconv_stats", mode=mode, kernel=k), t, flop))


def bench_norm_mlp(args, rows):
    from mednext_fast import _C  # built: main() checked cpp.available()
    c = args.channels
    for r in args.ratios:
        y = torch.randn(1, c, *(3 * [args.size]))
        s1, s2 = y.sum((2, 3, 4)), (y * y).sum((2, 3, 4))
        p = (torch.randn(c), torch.randn(c), torch.randn(r * c, c, 1, 1, 1) / c ** 0.5, torch.randn(r * c),
             torch.randn(c, r * c, 1, 1, 1) / (r * c) ** 0.5, torch.randn(c))
        res = torch.randn_like(y)
        yc, resc = y.contiguous(memory_format=CL), res.contiguous(memory_format=CL)
        flop = 2 * 2 * y.numel() * r * c

        def gemm_tiles():  # the same op with the fused narrow-layer MLP off (ATen GEMM tiles)
            before = _C.set_mlp_fused(False)
            try:
                return cpp.norm_mlp(yc, s1, s2, *p, residual=resc)
            finally:
                _C.set_mlp_fused(before)

        t = timed({
            "eager": lambda: ops.norm_mlp(y, s1, s2, *p, residual=res),
            "eager_cl3d": lambda: ops.norm_mlp(yc, s1, s2, *p, residual=resc),
            "cpp": lambda: cpp.norm_mlp(yc, s1, s2, *p, residual=resc),
            "cpp_ncdhw": lambda: cpp.norm_mlp(y, s1, s2, *p, residual=res),
            "cpp_gemm": gemm_tiles,
        } | ({"cpp_bf16": lambda: cpp.norm_mlp(yc, s1, s2, *p, residual=resc, bf16_gemms=True)}
             if cpp.native_bf16() else {}), args.min_time)
        rows.append((dict(op="norm_mlp", ratio=r, mode="+res"), t, flop))


def csv_rows(args, env, rows, peak):
    """One CSV row per op and column; GFLOP/s and % of the measured peak for the cpp and cpp_out columns."""
    out = []
    for case, stats, flop in rows:
        for column, st in stats.items():
            row = dict(env, suite="cpp_ops", column=column, channels=args.channels, size=args.size, batch=1,
                       dtype="fp32", median_ms=st["median_s"] * 1e3, iqr_ms=st["iqr_s"] * 1e3, runs=st["runs"],
                       first_call_s=st["first_call_s"], **case)
            if column in ("cpp", "cpp_out"):
                gflops = flop / st["median_s"] / 1e9
                row.update(gflops=gflops, pct_of_peak=100 * gflops / peak,
                           extra=dict(peak="measured FMA peak", peak_gflops=round(peak, 1)))
            out.append(row)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=64, help="cubic spatial size (default 64)")
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--kernels", type=int, nargs="+", default=[3, 5, 7])
    ap.add_argument("--ratios", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--modes", default="stride1", help="comma list of stride1,stride2,transposed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-time", type=float, default=1.0, help="seconds of runs per column (default 1)")
    ap.add_argument("--skip", choices=["dwconv", "norm_mlp"], nargs="*", default=[])
    ap.add_argument("--csv", default=store.DEFAULT_CSV, help="results CSV to append to (default: %(default)s)")
    ap.add_argument("--note", default=None, help="free text for every row's note")
    args = ap.parse_args(argv)
    ok, why = cpp.available()
    if not ok:
        sys.exit(f"cpp ops unavailable: {why}")

    torch.set_num_threads(args.threads)
    from mednext_fast import _C
    peak = _C.fma_peak_gflops()
    env = device_info.row_environment("cpu", device_info.command_line("benchmarks.bench_cpp_ops", argv),
                                      note=args.note)
    print(f"torch {torch.__version__}, {args.threads} threads, {why}; 1x{args.channels}x{args.size}^3 fp32, "
          "median ms (compare ratios within one run: timings on a shared VM vary between runs); "
          f"measured FMA peak of {args.threads} thread(s): {peak:.0f} GFLOP/s")
    rows = []
    with torch.inference_mode():
        if "dwconv" not in args.skip:
            bench_dwconv(args, rows)
        if "norm_mlp" not in args.skip:
            bench_norm_mlp(args, rows)
    print(f"| op | {' | '.join(COLUMNS)} | vs eager | vs eager_cl3d | cpp GFLOP/s | % of peak | % of peak (cpp_out) |")
    print("|---" * (len(COLUMNS) + 6) + "|")
    for case, stats, flop in rows:
        t = {name: st["median_s"] * 1e3 for name, st in stats.items()}
        cells = " | ".join(f"{t[c]:.1f}" if c in t else "-" for c in COLUMNS)
        gflops = flop / t["cpp"] / 1e6
        out_share = f"{100 * flop / t['cpp_out'] / 1e6 / peak:.0f} %" if "cpp_out" in t else "-"
        name = report.fmt_case(tuple(case.get(k) for k in store.CASE_KEYS))
        print(f"| {name} | {cells} | {t['eager'] / t['cpp']:.2f}x | {t['eager_cl3d'] / t['cpp']:.2f}x "
              f"| {gflops:.1f} | {100 * gflops / peak:.0f} % | {out_share} |")
    written = store.append(csv_rows(args, env, rows, peak), args.csv)
    print(f"{written} rows appended to {args.csv} (run {env['run']})")


if __name__ == "__main__":
    main()
