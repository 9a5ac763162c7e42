"""``python -m mednext_fast``: a summary of the paper's MedNeXt variants and a smoke run of one of them."""
from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from . import backends
from .configs import KERNEL_SIZES, VARIANTS, create_mednext


def params_and_gmacs(variant: str, kernel: int, size: int) -> tuple[int, float]:
    """Parameters and multiply-accumulates of one forward on a 1x1xsize^3 patch (the paper's "GFlops"),
    counted on the meta device (no memory, no compute)."""
    with torch.device("meta"):
        model = create_mednext(variant, 1, 13, kernel_size=kernel, backend="torch")
        x = torch.empty(1, 1, size, size, size)
    with FlopCounterMode(display=False) as counter:
        model(x)
    return sum(p.numel() for p in model.parameters()), counter.get_total_flops() / 2e9


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mednext_fast", description=__doc__)
    parser.add_argument("--variants", default="S,B,M,L",
                        help="comma-separated variants for the table (default: S,B,M,L)")
    parser.add_argument("--kernels", default="3,5,7", help="comma-separated kernel sizes (default: 3,5,7)")
    parser.add_argument("--macs-size", type=int, default=128, help="patch edge for the GMACs column (default: 128)")
    parser.add_argument("--run", default="S:3", help="VARIANT:KERNEL to build and run once (default: S:3)")
    parser.add_argument("--size", type=int, default=32,
                        help="input edge for the smoke run, divisible by 16 (default: 32)")
    args = parser.parse_args(argv)

    variants = [v.strip().upper() for v in args.variants.split(",")]
    kernels = [int(k) for k in args.kernels.split(",")]
    for v in variants:
        if v not in VARIANTS:
            parser.error(f"unknown variant {v!r}; choose from {','.join(VARIANTS)}")
    for k in kernels:
        if k not in KERNEL_SIZES:
            parser.error(f"kernel size {k} not supported; choose from {KERNEL_SIZES}")

    print(f"MedNeXt variants (in_channels=1, n_classes=13, deep supervision off); GMACs at 1x1x{args.macs_size}^3")
    print(f"{'variant':>7} {'kernel':>6} {'params':>12} {'GMACs':>8}")
    for v in variants:
        for k in kernels:
            n, gmacs = params_and_gmacs(v, k, args.macs_size)
            print(f"{v:>7} {k:>6} {n:>12,} {gmacs:>8.1f}")

    variant, kernel = args.run.split(":")
    model = create_mednext(variant, 1, 13, kernel_size=int(kernel), deep_supervision=True).eval()
    x = torch.randn(1, 1, args.size, args.size, args.size)
    available = [name for name in backends.BACKENDS[1:] if backends.is_available(name)]
    start = time.perf_counter()
    with torch.inference_mode():
        outs = model(x)
    seconds = time.perf_counter() - start
    print(f"\nMedNeXt-{variant.upper()} k{kernel} forward on {tuple(x.shape)}: {seconds:.2f} s, "
          f"outputs {[tuple(o.shape) for o in outs]}")
    print(f"backends available here: {', '.join(available)} (model backend: {model.backend})")


if __name__ == "__main__":
    main()
