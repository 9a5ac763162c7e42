"""Input validation with messages that name the problem and the fix."""
from __future__ import annotations

import torch

DIVISOR = 16  # four 2x down-samplings; skip additions need every spatial size divisible by 16


def _nearest_valid(n: int, divisor: int = DIVISOR) -> str:
    lower = n // divisor * divisor
    upper = lower + divisor
    return f"pad or crop it to {lower} or {upper}" if lower else f"pad it to {upper}"


def check_input(model, x: torch.Tensor) -> None:
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
    if model.do_ds and not hasattr(model, "out_1"):
        raise RuntimeError("do_ds is True but the model was built without deep_supervision heads "
                           "(out_1..out_4); build it with deep_supervision=True")
