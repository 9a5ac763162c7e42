"""GPU micro-benchmark of one stride-1 MedNeXt block: Triton fused ops vs eager PyTorch and torch.compile.

    python -m benchmarks.bench_block_gpu [--quick] [--csv PATH] [--out DIR]

Cases: MedNeXt levels 0..4 at batch 2 and a 128^3 input (C=32 at 128^3 ... C=512 at 8^3), expansion
ratios R and kernel sizes k, under bf16 autocast (fp32 master weights). Columns:

* ``triton``      - mednext_fast.kernels dwconv_stats + norm_mlp, NCDHW input (one layout copy per op)
* ``triton_cl``   - the same with a channels_last_3d input: the steady state inside a network, since the
                    ops return channels_last_3d tensors
* ``eager``       - the reference block (Conv3d depthwise, GroupNorm, Conv3d 1x1, GELU, Conv3d 1x1, residual), NCDHW
* ``eager_cl``    - the same with module and input in channels_last_3d
* ``compile``     - torch.compile of the NCDHW reference block
* ``triton_dw`` / ``triton_mlp`` - the two fused ops alone (forward only), for the per-op rooflines

Modes ``fwd`` and ``fwdbwd`` (forward + backward with a fixed upstream gradient). Time: median of
``triton.testing.do_bench``. Memory: allocator peak above the inputs, and the activation memory kept for
backward (allocated after the forward minus before, output excluded). Rates: achieved GB/s against a
minimal-traffic model (each activation read/written once in bf16) and TFLOP/s against model FLOPs
(2*k^3 per voxel-channel for the depthwise conv, 4*R*C^2 per voxel for the MLP; fwd+bwd counted as 3x the
forward), with the fraction of the vendor peak when the GPU is known. Appends one row per cell to the
results CSV (suite "block_gpu"; the bf16 error of the triton and eager blocks against fp32 eager goes in
their fwd rows' "extra"); --out also writes results.md there. On a machine without CUDA it prints
"no CUDA: skipped" and exits 0.
"""
import argparse
import os
import statistics
import sys
import time
import types

import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmarks import device_info, store

LEVELS = {0: (32, 128), 1: (64, 64), 2: (128, 32), 3: (256, 16), 4: (512, 8)}  # level -> (C, edge)
# Vendor peaks: (HBM bytes/s, fp32 FMA FLOP/s, bf16 tensor-core FLOP/s). Matched by substring of the name.
PEAKS = {"H200": (4.8e12, 66.9e12, 989.4e12), "H100 PCIe": (2.0e12, 51.2e12, 756e12),
         "H100": (3.35e12, 66.9e12, 989.4e12), "A100": (2.04e12, 19.5e12, 312e12)}
COLUMNS = ("triton", "triton_cl", "eager", "eager_cl", "compile", "triton_dw", "triton_mlp")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--out", default=None, help="also write results.md to this folder")
    parser.add_argument("--csv", default=store.DEFAULT_CSV, help="results CSV to append to (default: %(default)s)")
    parser.add_argument("--note", default=None, help="free text for every row's note")
    parser.add_argument("--quick", action="store_true",
                        help="levels 0,2,4, k=3,5, R=2, short do_bench (a few minutes)")
    parser.add_argument("--levels", default="0,1,2,3,4", help="MedNeXt levels (0: C=32 at 128^3 ... 4: C=512 at 8^3)")
    parser.add_argument("--kernels", default="3,5,7", help="depthwise kernel sizes")
    parser.add_argument("--ratios", default="2,4,8", help="expansion ratios R")
    parser.add_argument("--modes", default="fwd,fwdbwd")
    parser.add_argument("--columns", default=",".join(COLUMNS), help=f"subset of {','.join(COLUMNS)}")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp16"))
    parser.add_argument("--budget-s", type=float, default=0, help="stop starting new cases after this many seconds")
    args = parser.parse_args(argv)
    if args.quick:
        args.levels, args.kernels, args.ratios = "0,2,4", "3,5", "2"
    args.levels = [int(v) for v in args.levels.split(",")]
    args.kernels = [int(v) for v in args.kernels.split(",")]
    args.ratios = [int(v) for v in args.ratios.split(",")]
    args.modes = args.modes.split(",")
    args.columns = args.columns.split(",")
    bad = [c for c in args.columns if c not in COLUMNS]
    if bad or any(lv not in LEVELS for lv in args.levels) or any(k % 2 == 0 or k > 7 for k in args.kernels):
        parser.error(f"bad --columns {bad} / --levels / --kernels (odd, <= 7)")
    return args


class RefBlock(nn.Module):
    """The eager MedNeXt block (stride 1, residual) as in the official code."""

    def __init__(self, c: int, r: int, k: int):
        super().__init__()
        self.conv1 = nn.Conv3d(c, c, k, padding=k // 2, groups=c)
        self.norm = nn.GroupNorm(c, c)
        self.conv2 = nn.Conv3d(c, r * c, 1)
        self.conv3 = nn.Conv3d(r * c, c, 1)

    def forward(self, x):
        return x + self.conv3(F.gelu(self.conv2(self.norm(self.conv1(x)))))


def fused_block(block: RefBlock, ops):
    def run(x):
        y, s1, s2 = ops.dwconv_stats(x, block.conv1.weight, block.conv1.bias)
        return ops.norm_mlp(y, s1, s2, block.norm.weight, block.norm.bias, block.conv2.weight, block.conv2.bias,
                            block.conv3.weight, block.conv3.bias, residual=x, eps=block.norm.eps)
    return run


def model_cost(n, c, edge, r, k, mode):
    voxels = n * edge ** 3
    flops = 2 * k ** 3 * voxels * c + 4 * r * c * c * voxels
    bytes_ = 10 * c * voxels  # bf16: x, y (write + read), residual, out; stats and weights are negligible
    if mode == "fwdbwd":
        flops, bytes_ = 3 * flops, 3 * bytes_
    return flops, bytes_


def _peaks(name):
    for key, value in PEAKS.items():
        if key in name:
            return value
    return None


def bench_case(args, ops, level, k, r, mode, column, dtype):
    from triton.testing import do_bench

    c, edge = LEVELS[level]
    n = args.batch
    torch.manual_seed(0)
    block = RefBlock(c, r, k).cuda()
    x = torch.randn(n, c, edge, edge, edge, device="cuda")
    if column == "eager_cl":
        block = block.to(memory_format=torch.channels_last_3d)
    if column in ("eager_cl", "triton_cl", "triton_dw", "triton_mlp"):
        x = x.contiguous(memory_format=torch.channels_last_3d)
    x.requires_grad_(mode == "fwdbwd")
    params = list(block.parameters())
    for p in params:
        p.requires_grad_(mode == "fwdbwd")
    if column in ("triton", "triton_cl", "triton_dw", "triton_mlp"):
        fn = fused_block(block, ops)
    elif column == "compile":
        fn = torch.compile(block)
    else:
        fn = block
    if column == "triton_dw":
        def fn(t, _b=block):
            return ops.dwconv_stats(t, _b.conv1.weight, _b.conv1.bias)[0]
    elif column == "triton_mlp":
        with torch.no_grad(), torch.autocast("cuda", dtype=dtype):
            y0, s10, s20 = ops.dwconv_stats(x, block.conv1.weight, block.conv1.bias)

        def fn(t, _b=block):
            return ops.norm_mlp(y0, s10, s20, _b.norm.weight, _b.norm.bias, _b.conv2.weight, _b.conv2.bias,
                                _b.conv3.weight, _b.conv3.bias, residual=t, eps=_b.norm.eps)
    grad = torch.randn(n, c, edge, edge, edge, device="cuda", dtype=torch.float32)

    def step():
        with torch.autocast("cuda", dtype=dtype):
            out = fn(x)
        if mode == "fwdbwd":
            out.backward(grad.to(out.dtype))
        return out

    step()  # warm-up / compile
    torch.cuda.synchronize()
    ms = do_bench(step, warmup=10 if args.quick else 25, rep=50 if args.quick else 200,
                  grad_to_none=[x, *params] if mode == "fwdbwd" else None, return_mode="median")
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    with torch.autocast("cuda", dtype=dtype):
        out = fn(x)
    kept = torch.cuda.memory_allocated() - base - out.numel() * out.element_size()
    if mode == "fwdbwd":
        out.backward(grad.to(out.dtype))
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    row = dict(level=level, C=c, edge=edge, N=n, R=r, k=k, mode=mode, column=column, median_ms=ms,
               peak_extra_bytes=int(peak), saved_for_backward_bytes=int(kept) if mode == "fwdbwd" else None)
    if column in ("triton", "triton_cl", "eager", "eager_cl", "compile"):
        flops, bytes_ = model_cost(n, c, edge, r, k, mode)
    elif column == "triton_dw":
        voxels = n * edge ** 3
        flops, bytes_ = 2 * k ** 3 * voxels * c, 4 * c * voxels
    else:
        voxels = n * edge ** 3
        flops, bytes_ = 4 * r * c * c * voxels, 6 * c * voxels
    if mode == "fwdbwd" and column in ("triton_dw", "triton_mlp"):
        flops, bytes_ = 3 * flops, 3 * bytes_
    row["model_tflops"] = flops / (ms * 1e-3) / 1e12
    row["model_gbps"] = bytes_ / (ms * 1e-3) / 1e9
    peaks = _peaks(torch.cuda.get_device_name())
    if peaks is not None:
        bw, fma, tc = peaks
        # Roofline time: memory floor vs the compute floor (depthwise on FMA units, MLP on tensor cores).
        voxels = n * edge ** 3
        dw_fl, mlp_fl = 2 * k ** 3 * voxels * c, 4 * r * c * c * voxels
        if column == "triton_dw":
            mlp_fl = 0
        if column == "triton_mlp":
            dw_fl = 0
        mult = 3 if mode == "fwdbwd" else 1
        floor_s = max(bytes_ / bw, mult * (dw_fl / fma + mlp_fl / tc))
        row["roofline_fraction"] = floor_s / (ms * 1e-3)
    del out
    return row


def check_error(ops, level, k, r, dtype):
    """bf16 max error of the Triton block vs eager autocast, both vs fp32 eager (a sanity column)."""
    c, edge = LEVELS[level]
    edge = min(edge, 32)
    torch.manual_seed(1)
    block = RefBlock(c, r, k).cuda()
    x = torch.randn(2, c, edge, edge, edge, device="cuda")
    with torch.no_grad():
        ref = block(x)
        with torch.autocast("cuda", dtype=dtype):
            eager = block(x).float()
            tri = fused_block(block, ops)(x).float()
    scale = ref.abs().max().item()
    return dict(triton_rel_err=(tri - ref).abs().max().item() / scale,
                eager_rel_err=(eager - ref).abs().max().item() / scale)


def csv_rows(env, args, rows, error):
    """The CSV rows of one (level, k, R) case; ``error`` is its check_error result."""
    out = []
    for row in rows:
        c, edge = LEVELS[row["level"]]
        entry = dict(env, suite="block_gpu", level=row["level"], channels=c, size=edge, batch=args.batch,
                     ratio=row["R"], kernel=row["k"], mode=row["mode"], dtype=args.dtype, column=row["column"])
        if "median_ms" not in row:
            entry["skipped"] = f"error: {row.get('error', '')}"[:300]
            out.append(entry)
            continue
        extra = {}
        if row.get("saved_for_backward_bytes") is not None:
            extra["saved_for_backward_bytes"] = row["saved_for_backward_bytes"]
        if row["mode"] == "fwd" and row["column"] in ("triton", "eager") and error:
            key = "triton_rel_err" if row["column"] == "triton" else "eager_rel_err"
            if error.get(key) == error.get(key):  # not NaN
                extra["max_rel_err_vs_fp32"] = error[key]
        if "roofline_fraction" in row:
            extra["peak"] = "roofline (vendor peaks)"
        entry.update(median_ms=row["median_ms"], peak_extra_bytes=row["peak_extra_bytes"],
                     gflops=row["model_tflops"] * 1e3, gbps=row["model_gbps"],
                     pct_of_peak=100 * row["roofline_fraction"] if "roofline_fraction" in row else None,
                     extra=extra or None)
        out.append(entry)
    return out


def write_markdown(path, meta, rows, errors):
    lines = [f"# MedNeXt block micro-benchmark ({meta['device']})", "",
             f"torch {meta['torch']}, triton {meta['triton']}, CUDA {meta['cuda']}, cuDNN {meta['cudnn']}, "
             f"{meta['dtype']} autocast, batch {meta['batch']}, {meta['date']}", "",
             "Cell: median ms (speed-up vs eager NCDHW) [peak extra MiB; saved-for-backward MiB] "
             "{GB/s model, TFLOP/s model, roofline fraction}", ""]
    cases = sorted({(r["level"], r["k"], r["R"], r["mode"]) for r in rows})
    cols = [c for c in COLUMNS if any(r["column"] == c for r in rows)]
    lines.append("| level (C, edge) | k | R | mode | " + " | ".join(cols) + " |")
    lines.append("|" + "---|" * (4 + len(cols)))
    for level, k, r_, mode in cases:
        cell = {row["column"]: row for row in rows
                if (row["level"], row["k"], row["R"], row["mode"]) == (level, k, r_, mode)}
        eager = cell.get("eager", {}).get("median_ms")
        out = []
        for col in cols:
            row = cell.get(col)
            if row is None or "median_ms" not in row:
                out.append(row.get("error", "-") if row else "-")
                continue
            sp = f" ({eager / row['median_ms']:.2f}x)" if eager and col not in ("triton_dw", "triton_mlp") else ""
            mem = f"{row['peak_extra_bytes'] / 2 ** 20:.0f}"
            if row.get("saved_for_backward_bytes") is not None:
                mem += f"; {row['saved_for_backward_bytes'] / 2 ** 20:.0f}"
            roof = f", {row['roofline_fraction']:.0%}" if "roofline_fraction" in row else ""
            out.append(f"{row['median_ms']:.3f}{sp} [{mem}] {{{row['model_gbps']:.0f}, "
                       f"{row['model_tflops']:.1f}{roof}}}")
        c, edge = LEVELS[level]
        lines.append(f"| {level} ({c}, {edge}^3) | {k} | {r_} | {mode} | " + " | ".join(out) + " |")
    if errors:
        lines += ["", "Sanity: max error relative to the fp32 eager block (edge capped at 32)", "",
                  "| level | k | R | triton | eager autocast |", "|---|---|---|---|---|"]
        for e in errors:
            lines.append(f"| {e['level']} | {e['k']} | {e['R']} | {e['triton_rel_err']:.2e} | "
                         f"{e['eager_rel_err']:.2e} |")
    from mednext_fast.atomic import write_text

    write_text(path, "\n".join(lines) + "\n")


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA: skipped")
        return 0
    import triton

    from mednext_fast.kernels import dwconv_stats as dw_mod
    from mednext_fast.kernels import norm_mlp as mlp_mod
    ops = types.SimpleNamespace(dwconv_stats=dw_mod.dwconv_stats, norm_mlp=mlp_mod.norm_mlp)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    argv_text = device_info.command_line("benchmarks.bench_block_gpu", argv)
    env = device_info.row_environment("cuda", argv_text, note=args.note)
    meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(), dtype=args.dtype, batch=args.batch,
                date=env["date"])
    rows, errors = [], []
    start = time.time()
    cases = [(level, k, r) for level in args.levels for k in args.kernels for r in args.ratios]
    for level, k, r in cases:
        if args.budget_s and time.time() - start > args.budget_s:
            print(f"budget of {args.budget_s:.0f} s reached: stopping", flush=True)
            break
        try:
            errors.append(dict(level=level, k=k, R=r, **check_error(ops, level, k, r, dtype)))
        except Exception as err:  # keep benchmarking the other cases
            errors.append(dict(level=level, k=k, R=r, triton_rel_err=float("nan"),
                               eager_rel_err=float("nan"), error=repr(err)[:300]))
        case_rows = []
        for mode in args.modes:
            for column in args.columns:
                try:
                    row = bench_case(args, ops, level, k, r, mode, column, dtype)
                except Exception as err:
                    row = dict(level=level, k=k, R=r, mode=mode, column=column, error=repr(err)[:300])
                case_rows.append(row)
                print(row, flush=True)
                torch.cuda.empty_cache()
        rows += case_rows
        store.append(csv_rows(env, args, case_rows, errors[-1]), args.csv)  # partial results survive a timeout
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            write_markdown(os.path.join(args.out, "results.md"), meta, rows, errors)
    summary = [statistics.median([r["median_ms"] for r in rows if r.get("column") == c and "median_ms" in r])
               for c in args.columns if any(r.get("column") == c and "median_ms" in r for r in rows)]
    print(f"{len(rows)} rows appended to {args.csv} (run {env['run']}; medians {summary})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
