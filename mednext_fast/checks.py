"""Input validation with messages that name the problem and the fix."""
from __future__ import annotations

import torch
import torch.nn as nn

from . import backends

DIVISOR = 16  # four 2x down-samplings; skip additions need every spatial size divisible by 16


def _nearest_valid(n: int, divisor: int = DIVISOR) -> str:
    lower = n // divisor * divisor
    upper = lower + divisor
    return f"pad or crop it to {lower} or {upper}" if lower else f"pad it to {upper}"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def check_input(model, x: torch.Tensor) -> None:
    """Raise naming the problem and the fix unless ``model`` (a MedNeXt) can run ``x``.

    An empty batch (N = 0) is valid: every backend returns empty outputs of the right shapes.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"MedNeXt expects a torch.Tensor, got {type(x).__name__}")
    spatial = 3 if model.dim == "3d" else 2
    if x.dim() != spatial + 2:
        layout = "(N, C, D, H, W)" if spatial == 3 else "(N, C, H, W)"
        raise ValueError(f"MedNeXt(dim={model.dim!r}) expects a {spatial + 2}-D input {layout}, "
                         f"got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"MedNeXt expects a floating-point input, got {x.dtype}; convert with x.float()")
    if x.shape[1] != model.in_channels:
        raise ValueError(f"MedNeXt was built for {model.in_channels} input channel(s), "
                         f"got {x.shape[1]} (input shape {tuple(x.shape)})")
    axes = "DHW" if spatial == 3 else "HW"
    for axis, n in zip(axes, x.shape[2:]):
        if n % DIVISOR:
            raise ValueError(f"spatial size {axis}={n} is not divisible by {DIVISOR} (input shape "
                             f"{tuple(x.shape)}); {_nearest_valid(n)}")
    param = model.stem.weight
    if x.device != param.device:
        raise RuntimeError(f"input is on {x.device} but the model's parameters are on {param.device}; "
                           f"move one of them (e.g. model.to({str(x.device)!r}))")
    if x.dtype != param.dtype and not torch.is_autocast_enabled(x.device.type):
        have, want = _dtype_name(x.dtype), _dtype_name(param.dtype)
        raise TypeError(f"input dtype {have} differs from the model's weights ({want}); convert the input "
                        f"(x.to(torch.{want})), convert the model (model.to(torch.{have})), or run under "
                        f"torch.autocast({x.device.type!r}) for mixed precision with {want} weights")
    if model.do_ds and not hasattr(model, "out_1"):
        raise RuntimeError("do_ds is True but the model was built without deep_supervision heads "
                           "(out_1..out_4); build it with deep_supervision=True")
    _check_trainable_size(model, x)


def trainable_size(spatial) -> bool:
    """True if a patch of spatial size ``spatial`` (sizes divisible by 16) can train a GroupNorm MedNeXt:
    its 1/16 bottleneck has at least 2 voxels (32 along one axis, e.g. 16x16x32)."""
    voxels = 1
    for n in spatial:  # a plain loop: torch.compile cannot trace a generator here
        voxels *= int(n) // DIVISOR
    return voxels >= 2


def _check_trainable_size(model, x: torch.Tensor) -> None:
    """Training needs >= 2 voxels per sample at the 1/16 bottleneck, where GroupNorm (one group per channel)
    takes each channel's statistics over that sample's voxels: over one voxel the variance is 0, the output is
    the norm's bias alone and no gradient passes (PyTorch's GroupNorm also raises there when N == 1)."""
    if not model.training or not isinstance(getattr(model.down_3, "norm", None), nn.GroupNorm):
        return
    if trainable_size(x.shape[2:]) or not backends.needs_grad(model, x):
        return
    bottleneck = [n // DIVISOR for n in x.shape[2:]]
    if getattr(model, "backend", "torch") not in ("auto", "torch"):
        backends.load(model.backend).check_device(x)  # a wrong device is the first thing to fix
    spatial = "x".join(str(n) for n in x.shape[2:])
    smallest = "x".join(["16"] * (len(bottleneck) - 1) + ["32"])
    raise ValueError(f"input spatial size {spatial} is too small to train MedNeXt: its 1/16 bottleneck is "
                     f"{'x'.join(map(str, bottleneck))} (one voxel), and GroupNorm needs at least 2 voxels per "
                     f"channel and sample there. The minimum training input is 32 along one axis ({smallest}; "
                     f"32^3 or more is usual)")
