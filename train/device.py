"""The device a process runs on and the autocast dtype it uses."""
from __future__ import annotations

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
