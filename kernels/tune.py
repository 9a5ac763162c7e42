"""Tune the depthwise conv kernels' launch configurations on this GPU and write the table the kernels read.

    python -m mednext_fast.kernels.tune [--out kernels/tuned/<gpu>.json] [--kernels 3,5,7] [--levels 0,1,2,3,4]
                                        [--dtype bf16] [--batch 2] [--size 128] [--budget-s 120]

For each MedNeXt-S level (C = 32 * 2^level, edge size/2^level) and kernel size, most expensive first, it
runs the forward and backward of the stride-1 conv, the down block's and the up block's, timing every
candidate of the search space (kernels/tuning.py) on those tensors; the fastest per launch goes into the
table, written after every case (so a stopped run keeps what it measured). It prints each launch's time with
the default configuration and with the winner. Commit the table as kernels/tuned/<gpu>.json: the kernels then
use it on every GPU of that name. Needs CUDA.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time


def cases(levels, kernels):
    """(level, k, mode) most expensive first: level 0 before deeper ones, larger k first, stride 1 first."""
    for level in sorted(levels):
        for k in sorted(kernels, reverse=True):
            for mode in ("stride1", "down", "up"):
                if mode != "stride1" and level >= 4:
                    continue
                yield level, k, mode


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mednext_fast.kernels.tune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="table to write (default: kernels/tuned/<gpu>.json)")
    parser.add_argument("--kernels", default="3,5,7")
    parser.add_argument("--levels", default="0,1,2,3,4")
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=128, help="level-0 edge (default: 128)")
    parser.add_argument("--budget-s", type=float, default=None, help="stop starting cases after this many seconds")
    args = parser.parse_args(argv)

    import torch
    if not torch.cuda.is_available():
        print("tune: needs a CUDA GPU (the kernels are timed on it)", file=sys.stderr)
        return 2
    from . import dwconv_stats as dw
    from . import tuning

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    slug = tuning.gpu_slug(torch.cuda.get_device_name())
    out = args.out or os.path.join(tuning.TUNED_DIR, f"{slug}.json")
    import triton
    meta = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                cuda=torch.version.cuda, dtype=args.dtype, batch=args.batch, size=args.size,
                date=time.strftime("%Y-%m-%d"))
    # Tune every launch afresh: no committed table, a scratch cache, timings recorded.
    scratch = tempfile.mkdtemp()
    tuning.TUNED_DIR = scratch
    os.environ["MEDNEXT_FAST_CACHE_DIR"] = scratch
    os.environ["MEDNEXT_FAST_AUTOTUNE"] = "1"
    tuning.clear()
    tuning.TIMINGS.clear()
    start = time.time()
    todo = list(cases([int(v) for v in args.levels.split(",")], [int(v) for v in args.kernels.split(",")]))
    try:
        from tqdm import tqdm
        progress = tqdm(todo, desc="tuning", unit="case")
    except ImportError:
        progress = todo
    for level, k, mode in progress:
        if args.budget_s is not None and time.time() - start > args.budget_s:
            print(f"tune: budget of {args.budget_s:.0f} s spent; the table holds the cases measured so far")
            break
        c, edge = 32 << level, args.size >> level
        if mode == "up":  # the up block arriving at this level runs on the level below's 2c channels
            c, edge = 2 * c, edge // 2
        x = torch.randn(args.batch, c, edge, edge, edge, device="cuda", dtype=dtype)
        x = x.contiguous(memory_format=torch.channels_last_3d).requires_grad_()
        w = (torch.randn(c, 1, k, k, k, device="cuda") / k ** 1.5).requires_grad_()
        b = torch.randn(c, device="cuda").requires_grad_()
        kw = dict(transposed=True) if mode == "up" else dict(stride=2 if mode == "down" else 1)
        y, s1, s2 = dw.dwconv_stats(x, w, b, **kw)
        (y.float().mean() + s1.mean() + s2.mean()).backward()
        torch.cuda.synchronize()
        tuning.write_table(out, tuning.table(slug), meta)
    for launch_key, timings in tuning.TIMINGS.items():
        default_ms = timings["default"]
        best_cfg, best_ms = min(timings["candidates"], key=lambda item: item[1])
        print(f"{launch_key}: default {default_ms:.3f} ms -> {best_ms:.3f} ms ({default_ms / best_ms:.2f}x) "
              f"with {tuple(best_cfg)}")
    print(f"tune: {len(tuning.table(slug))} launches in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
