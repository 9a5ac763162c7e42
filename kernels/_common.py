"""Helpers shared by the Triton ops: input checks, autocast, layouts and block sizes."""
import os

import torch

FLOAT_ACTS = (torch.float32, torch.float16, torch.bfloat16)


def interpreting(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"


def check_device(name: str, *tensors) -> None:
    first = tensors[0]
    if first.device.type == "cuda":
        pass
    elif first.device.type == "cpu":
        if os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError(f"{name}: the Triton kernels need CUDA tensors (CPU tensors only run in the "
                               "Triton interpreter, TRITON_INTERPRET=1 set before triton is imported)")
    else:
        raise RuntimeError(f"{name}: unsupported device {first.device}")
    for t in tensors[1:]:
        if t is not None and t.device != first.device:
            raise RuntimeError(f"{name}: all tensors must be on {first.device}, got one on {t.device}")


def check_float(name: str, what: str, t: torch.Tensor) -> None:
    if t.dtype not in FLOAT_ACTS:
        raise TypeError(f"{name}: {what} must be float32, float16 or bfloat16, got {t.dtype}")


def autocast_activation(t: torch.Tensor) -> torch.Tensor:
    """Cast an fp32 activation to the autocast dtype when autocast is on for its device.

    Custom ops are invisible to autocast, so the public wrappers do what autocast would do to the
    activations; weights stay fp32 masters and are cast inside the kernels.
    """
    kind = t.device.type
    if kind in ("cuda", "cpu") and torch.is_autocast_enabled(kind):
        dtype = torch.get_autocast_dtype(kind)
        if t.dtype == torch.float32 and dtype in (torch.float16, torch.bfloat16):
            return t.to(dtype)
    return t


def channels_last_empty(n: int, channels: int, spatial, dtype, device) -> torch.Tensor:
    """An (N, C, *spatial) tensor stored channels-last (NDHWC), as every op here returns."""
    nd = len(spatial)
    raw = torch.empty((n, *spatial, channels), dtype=dtype, device=device)
    return raw.permute(0, nd + 1, *range(1, nd + 1))


def to_rows(t: torch.Tensor) -> torch.Tensor:
    """(N, C, *spatial) -> contiguous (N, S, C); free for channels_last_3d tensors."""
    nd = t.dim() - 2
    return t.permute(0, *range(2, nd + 2), 1).contiguous().view(t.shape[0], -1, t.shape[1])


def next_pow2(v: int) -> int:
    return 1 << max(0, int(v) - 1).bit_length()
