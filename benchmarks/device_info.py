"""What ran the benchmark: device name, ISA, commit, library versions, the settings that move CPU timings,
and the peak rates used for roofline columns."""
from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys
import time
import uuid

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Environment variables that change CPU timings, recorded in every row's note.
HEAP_KEPT = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")
NOTED = ("THP_MEM_ALLOC_ENABLE", "MEDNEXT_FAST_CPU_ISA", "OMP_NUM_THREADS")


def describe(device: str, with_peaks: bool = True) -> dict:
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
    if with_peaks:
        info["peaks"] = peaks(device, info["name"])
    return info


def isa(device: str) -> str:
    """CPU: the ISA build the C++ extension picked ('none' if it is not built); CUDA: sm_XY."""
    if device == "cuda":
        major, minor = torch.cuda.get_device_capability()
        return f"sm_{major}{minor}"
    try:
        from mednext_fast import _C
    except ImportError:
        return "none"
    return _C.isa()


def commit() -> str:
    """The measured code's commit: $MEDNEXT_FAST_COMMIT (for a copy of the tree without .git), else git's
    HEAD with '-dirty' when tracked files differ from it; '' when neither is known."""
    if os.environ.get("MEDNEXT_FAST_COMMIT"):
        return os.environ["MEDNEXT_FAST_COMMIT"]
    try:
        head = subprocess.run(["git", "rev-parse", "--short=7", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return ""
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return head.stdout.strip() + ("-dirty" if dirty else "")


def settings_note(device: str, extra: str | None = None) -> str:
    """The settings that move the numbers, as the row's note: the allocator (CPU), huge pages, an ISA cap."""
    parts = []
    if device == "cpu":
        kept = [f"{k}={os.environ[k]}" for k in HEAP_KEPT if k in os.environ]
        preload = [os.path.basename(p) for p in os.environ.get("LD_PRELOAD", "").split(":")
                   if "malloc" in p or "jemalloc" in p]
        if kept:
            parts.append("heap kept: " + " ".join(kept))
        if preload:
            parts.append("allocator: " + " ".join(preload))
        if not kept and not preload:
            parts.append("glibc default allocator")
    parts += [f"{k}={os.environ[k]}" for k in NOTED if k in os.environ]
    if extra:
        parts.append(extra)
    return "; ".join(parts)


def row_environment(device: str, command: str, info: dict | None = None, note: str | None = None) -> dict:
    """The fields every CSV row of one run shares (benchmarks.store.ENV_KEYS, note, command)."""
    info = info or describe(device, with_peaks=False)
    now = datetime.datetime.now(datetime.timezone.utc)
    return dict(date=now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                run=f"{now:%Y%m%dT%H%M%SZ}-{device}-{uuid.uuid4().hex[:6]}",
                device=device, device_name=info["name"], isa=isa(device), threads=info["threads"],
                commit=commit(), python=info["python"], torch=info["torch"], triton=info.get("triton"),
                cuda=info.get("cuda"), cudnn=info.get("cudnn"), note=settings_note(device, note),
                command=command)


def command_line(module: str, argv=None) -> str:
    """``python -m module ARGS`` with the arguments (default: this process's), as typed at the repo root."""
    args = sys.argv[1:] if argv is None else list(argv)
    return " ".join([f"python -m {module}"] + [shlex.quote(str(a)) for a in args])


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
    """Peak bandwidth and FLOP rates: the vendor table of benchmarks.roofline for known GPUs, else a probe
    (copy and matmul)."""
    if device == "cuda":
        from benchmarks import roofline

        try:
            known = roofline.gpu(name)
        except KeyError:
            known = roofline.probe()
        return dict(source=known.source, name=known.name, gbps=known.gbps, fp32_gflops=known.fp32_tflops * 1e3,
                    bf16_gflops=known.tensor_tflops * 1e3 if known.tensor_tflops else None)
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
