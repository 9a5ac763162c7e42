"""MedNeXt benchmarks: kernel sizes 3/5/7 x variants S/B/M/L, our backends against eager PyTorch,
torch.compile and MONAI, forward and train step, time and peak memory, on CPU or CUDA.

    python -m benchmarks.run --device cpu --suite model --variants S --kernels 3,5 --size 64
    python -m benchmarks.run --device cuda --suite train,blocks,ops --dtype bf16 --budget-s 300

Appends one row per measured cell to the results CSV (--csv, default benchmarks/results/results.csv) after
every case, so a killed run keeps what it measured; prints the run's table at the end; --out also writes
results.md and PNG plots there. Every ratio is against the 'eager' column of the same case in the same run.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time

import torch

from benchmarks import cases, device_info, measure, report, roofline, store
from mednext_fast.configs import VARIANTS, variant_config

SUITES = ("ops", "blocks", "model", "train")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--suite", default="model", help=f"comma-separated, from {','.join(SUITES)} (default: model)")
    parser.add_argument("--variants", default="S,B,M,L", help="comma-separated variants (default: S,B,M,L)")
    parser.add_argument("--kernels", default="3,5,7", help="comma-separated kernel sizes (default: 3,5,7)")
    parser.add_argument("--columns", default=",".join(cases.COLUMNS),
                        help=f"implementations to compare, first must be eager (default: {','.join(cases.COLUMNS)})")
    parser.add_argument("--dtype", choices=tuple(cases.DTYPES), default=None,
                        help="autocast dtype (default: bf16 on cuda, fp32 on cpu)")
    parser.add_argument("--size", type=int, default=None,
                        help="input edge, divisible by 16 (default: 128 cuda, 64 cpu)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: 2 cuda, 1 cpu)")
    parser.add_argument("--levels", default="0,1,2,3,4", help="network levels for the blocks/ops suites (default: all)")
    parser.add_argument("--checkpointing", default="off,on", help="train suite: off, on or both (default: off,on)")
    parser.add_argument("--min-time", type=float, default=None,
                        help="seconds of repeated runs per cell (default: 1 cuda, 2 cpu)")
    parser.add_argument("--min-runs", type=int, default=None,
                        help="timed runs per cell at least (default: 3 cuda, 5 cpu)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="stop measuring after this many seconds; the cells left are not run")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--csv", default=store.DEFAULT_CSV, help="results CSV to append to (default: %(default)s)")
    parser.add_argument("--note", default=None,
                        help="free text for every row's note (the allocator and huge-page settings are added)")
    parser.add_argument("--out", default=None, help="also write results.md and PNG plots to this folder")
    args = parser.parse_args(argv)
    args.suite = _split(args.suite, SUITES, parser, "suite")
    args.variants = [v.upper() for v in _split(args.variants.upper(), tuple(VARIANTS), parser, "variant")]
    args.kernels = [int(k) for k in _split(args.kernels, ("3", "5", "7"), parser, "kernel")]
    args.columns = _split(args.columns, cases.COLUMNS, parser, "column")
    if args.columns[0] != "eager":
        parser.error("the first column must be eager: every ratio is measured against it")
    args.levels = [int(v) for v in _split(args.levels, tuple("01234"), parser, "level")]
    args.checkpointing = [c == "on" for c in _split(args.checkpointing, ("off", "on"), parser, "checkpointing")]
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device is visible")
    args.dtype = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    args.size = args.size or (128 if args.device == "cuda" else 64)
    if args.size % 16:
        parser.error(f"--size {args.size} is not divisible by 16")
    args.batch = args.batch or (2 if args.device == "cuda" else 1)
    args.min_time = args.min_time or (1.0 if args.device == "cuda" else 2.0)
    args.min_runs = args.min_runs or (3 if args.device == "cuda" else 5)
    return args


def _split(text, allowed, parser, what):
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    for item in items:
        if item not in allowed:
            parser.error(f"unknown {what} {item!r}; choose from {','.join(allowed)}")
    return items


def grid(args):
    """(suite, case fields, builder) for every cell, cheapest suites first."""
    for suite in args.suite:
        if suite == "ops":
            for level in args.levels:
                channels, size = 32 * 2 ** level, args.size // 2 ** level
                for kernel in args.kernels:
                    yield suite, dict(op="dwconv_stats", kernel=kernel, level=level), \
                        dict(channels=channels, size=size, ratio=4)
                yield suite, dict(op="norm_mlp", level=level, kernel=None), dict(channels=channels, size=size, ratio=4)
        elif suite == "blocks":
            for variant in args.variants:
                ratios = variant_config(variant)["exp_r"]
                ratios = [ratios] * 9 if isinstance(ratios, int) else ratios
                for level in args.levels:
                    for kernel in args.kernels:
                        for mode in ("fwd", "fwd+bwd"):
                            yield suite, dict(variant=variant, level=level, kernel=kernel, mode=mode), \
                                dict(channels=32 * 2 ** level, size=args.size // 2 ** level, ratio=ratios[level])
        elif suite == "model":
            for variant in args.variants:
                for kernel in args.kernels:
                    yield suite, dict(variant=variant, kernel=kernel, mode="fwd"), {}
        elif suite == "train":
            for variant in args.variants:
                for kernel in args.kernels:
                    for ckpt in args.checkpointing:
                        yield suite, dict(variant=variant, kernel=kernel, mode="train", checkpointing=ckpt), {}


def build(suite, case, extra, column, args):
    return cases.with_cudnn_setting(_build(suite, case, extra, column, args), column, args.device)


def _build(suite, case, extra, column, args):
    device, dtype = args.device, args.dtype
    if suite == "ops":
        return cases.build_op(column, case["op"], extra["channels"], extra["ratio"], case["kernel"] or 3,
                              device, args.batch, extra["size"], dtype)
    if suite == "blocks":
        training = case["mode"] == "fwd+bwd"
        block, x = cases.build_block(column, extra["channels"], extra["ratio"], case["kernel"], device,
                                     args.batch, extra["size"], training)
        return cases.block_fn(block, x, device, dtype, training)
    if suite == "model":
        if column in cases.ONNX_COLUMNS:
            return cases.build_onnx_forward(column, case["variant"], case["kernel"], device, args.batch, args.size,
                                            dtype)
        model, x = cases.build_model(column, case["variant"], case["kernel"], device, False, args.batch, args.size)
        return cases.forward_fn(model, x, device, dtype)
    cases.check_column(column, device, training=True)
    model, x = cases.build_model(column, case["variant"], case["kernel"], device, case["checkpointing"],
                                 args.batch, args.size)
    return cases.train_step_fn(model, x, device, dtype)


def _why(err: Exception) -> str:
    return f"error: {type(err).__name__}: {(str(err).splitlines() or [''])[0][:160]}"


def measure_case(suite, case, extra, case_rows, args) -> None:
    """Build every column of one case, then time them interleaved (see measure.measure_interleaved)."""
    fns = {}
    for column, row in case_rows.items():
        try:
            fns[column] = build(suite, case, extra, column, args)
        except cases.Skip as why:
            row["skipped"] = f"skip: {why}"
        except Exception as err:  # e.g. out of memory or a kernel that fails to compile: keep going
            row["skipped"] = _why(err)
    timed = measure.measure_interleaved(fns, args.device, args.min_time, min_runs=args.min_runs)
    for column, result in timed.items():
        if isinstance(result, Exception):
            case_rows[column]["skipped"] = _why(result)
        else:
            if getattr(fns[column], "extra", None):
                case_rows[column]["extra"] = dict(case_rows[column].get("extra") or {}, **fns[column].extra)
            case_rows[column].update(median_ms=result["median_s"] * 1e3, iqr_ms=result["iqr_s"] * 1e3,
                                     runs=result["runs"], first_call_s=result["first_call_s"],
                                     peak_extra_bytes=result["peak_extra_bytes"], peak_bytes=result["peak_bytes"])


def _device(info) -> roofline.Device:
    peaks = info["peaks"]
    tensor = peaks.get("bf16_gflops")
    return roofline.Device(peaks.get("name") or info["name"], peaks["gbps"], peaks["fp32_gflops"] / 1e3,
                           tensor / 1e3 if tensor else None, source=peaks["source"])


def bound_kernels(suite, case, extra, args) -> list:
    """The roofline kernels of a cell (benchmarks.roofline): the op, the block or the whole model."""
    dtype = args.dtype if args.device == "cuda" else "fp32"
    if suite == "ops":
        c, v = extra["channels"], args.batch * extra["size"] ** 3
        if case["op"] == "dwconv_stats":
            return [roofline.dwconv_stats(c, v, v, case["kernel"] or 3, dtype, "fwd")]
        return [roofline.norm_mlp(c, c, extra["ratio"], v, dtype, "fwd")]
    if suite == "blocks":
        kernels = []
        roofline.block_kernels(kernels, "block", case["level"], extra["channels"], extra["ratio"],
                               args.batch * extra["size"] ** 3, case["kernel"], dtype, case["mode"] == "fwd+bwd")
        return kernels
    return roofline.model_kernels(case["variant"], case["kernel"], args.batch, args.size, dtype,
                                  "train" if suite == "train" else "fwd", n_classes=cases.N_CLASSES)


def annotate(row, suite, case, extra, args, info):
    """Achieved rates and the share of the roofline bound (benchmarks.roofline): every cell of the ops
    suite, and on CUDA every cell (the bound of a train step assumes no gradient checkpointing)."""
    if not row.get("median_ms") or not (suite == "ops" or args.device == "cuda"):
        return
    device = _device(info)
    kernels = bound_kernels(suite, case, extra, args)
    seconds, bound = row["median_ms"] / 1e3, roofline.bound_s(kernels, device)
    flops = sum(2 * k.core_ops + k.tensor_flops for k in kernels)
    nbytes = sum(k.bytes for k in kernels)
    row.update(gflops=flops / seconds / 1e9, gbps=nbytes / seconds / 1e9, pct_of_peak=100 * bound / seconds,
               extra=dict(row.get("extra") or {}, peak="roofline bound", bound_ms=round(bound * 1e3, 4),
                          peak_source=device.source, peak_gbps=round(device.gbps, 1),
                          peak_fp32_gflops=round(device.fp32_tflops * 1e3, 1),
                          peak_tensor_gflops=round(device.tensor_tflops * 1e3, 1) if device.tensor_tflops else None))


def case_row(env, suite, case, extra, column, args) -> dict:
    """The CSV fields of one cell before it is measured."""
    ckpt = case.get("checkpointing")
    return dict(env, suite=suite, column=column, dtype=args.dtype, batch=args.batch,
                size=extra.get("size", args.size), variant=case.get("variant"), kernel=case.get("kernel"),
                level=case.get("level"), op=case.get("op"), mode=case.get("mode"),
                checkpointing=None if ckpt is None else ("on" if ckpt else "off"),
                channels=extra.get("channels"), ratio=extra.get("ratio") if case.get("op") != "dwconv_stats" else None)


def kept(row) -> bool:
    """Rows written to the CSV: measured cells and cells that failed (not skipped or cut by the budget)."""
    return row.get("median_ms") is not None or str(row.get("skipped", "")).startswith("error")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = device_info.describe(args.device, with_peaks="ops" in args.suite or args.device == "cuda")
    env = device_info.row_environment(args.device, device_info.command_line("benchmarks.run", argv), info, args.note)
    groups = [(s, c, e, [col for col in args.columns if col in cases.SUITE_COLUMNS[s]]) for s, c, e in grid(args)]
    print(f"{sum(len(g[3]) for g in groups)} cells in {len(groups)} cases on {info['name']} ({args.device}, "
          f"{env['isa']}, {args.dtype}); run {env['run']}, rows -> {args.csv}", flush=True)
    try:
        from tqdm import tqdm
        progress = tqdm(groups, file=sys.stdout, mininterval=2, unit="case")
    except ImportError:
        progress = groups
    rows, start = [], time.perf_counter()
    for suite, case, extra, columns in progress:
        case_rows = {column: case_row(env, suite, case, extra, column, args) for column in columns}
        if args.budget_s is not None and time.perf_counter() - start > args.budget_s:
            for row in case_rows.values():
                row["skipped"] = "skip: time budget"
        else:
            measure_case(suite, case, extra, case_rows, args)
            for row in case_rows.values():
                if row.get("median_ms"):
                    annotate(row, suite, case, extra, args, info)
        rows.extend(case_rows.values())
        store.append([r for r in case_rows.values() if kept(r)], args.csv)  # a killed run keeps what it measured
        gc.collect()
        if args.device == "cuda":
            torch.cuda.empty_cache()
    table = report.grid(rows, args.columns)
    print(table)
    if args.out:
        from mednext_fast.atomic import write_text

        os.makedirs(args.out, exist_ok=True)
        write_text(os.path.join(args.out, "results.md"), table + "\n")
        plots = report.plot(args.out, [r for r in rows if r.get("median_ms") is not None], args.columns)
        print(f"wrote {args.out}/results.md" + "".join(f", {os.path.basename(p)}" for p in plots))
    print(f"{sum(kept(r) for r in rows)} rows appended to {args.csv} (run {env['run']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
