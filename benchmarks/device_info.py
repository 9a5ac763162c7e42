"""What ran the benchmark: device name, library versions, and the peak rates used for roofline columns."""
from __future__ import annotations

import platform
import time

import torch

# Vendor peaks for known GPUs: (bandwidth GB/s, fp32 FMA GFLOP/s, bf16 tensor-core GFLOP/s, dense).
GPU_PEAKS = {
    "H100 80GB HBM3": (3350, 66900, 989400),
    "H100 PCIe": (2000, 51200, 756000),
    "H200": (4800, 66900, 989400),
    "A100-SXM4-80GB": (2039, 19500, 312000),
    "A100-SXM4-40GB": (1555, 19500, 312000),
}


def describe(device: str) -> dict:
    info = dict(device=device, torch=torch.__version__, python=platform.python_version(),
                threads=torch.get_num_threads())
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device == "cuda":
        info["name"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    else:
        info["name"] = _cpu_name()
    info["peaks"] = peaks(device, info["name"])
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def peaks(device: str, name: str) -> dict:
    """Peak bandwidth and FLOP rates: a vendor table for known GPUs, else a quick probe (copy and matmul)."""
    if device == "cuda":
        for key, (bw, fp32, bf16) in GPU_PEAKS.items():
            if key in name:
                return dict(source="vendor table", gbps=bw, fp32_gflops=fp32, bf16_gflops=bf16)
    return dict(source="probe", **probe(device))


def probe(device: str, repeats: int = 5) -> dict:
    n = 1 << 24 if device == "cpu" else 1 << 28
    src = torch.empty(n, device=device).fill_(1)
    dst = torch.empty_like(src)
    a = torch.randn(1024, 1024, device=device)

    def best(fn):
        fastest = float("inf")
        for _ in range(repeats):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            fastest = min(fastest, time.perf_counter() - start)
        return fastest

    copy_s = best(lambda: dst.copy_(src))
    mm_s = best(lambda: a @ a)
    return dict(gbps=2 * n * 4 / copy_s / 1e9, fp32_gflops=2 * 1024 ** 3 / mm_s / 1e9)
