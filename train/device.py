"""The device a process runs on, the autocast dtype it uses, and how CPU training lays out and allocates memory."""
from __future__ import annotations

import ctypes
import os
import sys

import torch

AMP_CHOICES = ("bf16", "fp16", "off")


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """``name`` is 'auto', 'cpu', 'cuda' or 'cuda:N'; a bare 'cuda' means this process's GPU under torchrun."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {name}: CUDA is not available here; use --device cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    return device


def amp_dtype(choice: str | None, device: torch.device):
    """(autocast dtype or None, its name); ``None`` picks bf16 on GPUs that support it, else off."""
    if choice is None:
        choice = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "off"
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[choice], choice


def memory_format(device: torch.device) -> torch.memory_format:
    """The layout training keeps the model and its input batches in: channels_last_3d on CPU, where
    PyTorch's depthwise 3-D convolution and its backward go through oneDNN in that layout and take a
    fraction of the NCDHW time; NCDHW elsewhere (the GPU backends choose their own layout)."""
    return torch.channels_last_3d if device.type == "cpu" else torch.contiguous_format


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory in the process's heap instead of unmapping it, as
    ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...`` would (docs/performance.md, "CPU allocator and page
    faults"): eager PyTorch on CPU allocates every activation afresh, and each new mapping costs page
    faults and zeroing. The process then keeps its peak memory instead of returning it between steps.
    Returns whether it was applied: not on other C libraries or systems, and not where the user set
    either variable (their choice stands)."""
    if not sys.platform.startswith("linux") or {"MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_"} & set(os.environ):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no glibc allocator to tune
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1))
