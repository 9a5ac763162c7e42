"""UpKern: initialise a large-kernel MedNeXt from a trained smaller-kernel one (paper section 2.3)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint_io import load_state_dict_file, strip_prefixes
from .convert import convert_state_dict, is_monai_state_dict


def _source_state_dict(source) -> dict:
    if isinstance(source, nn.Module):
        state = source.state_dict()
    elif isinstance(source, dict):
        state = strip_prefixes(source)
    elif isinstance(source, (str, bytes)) or hasattr(source, "__fspath__"):
        state = load_state_dict_file(str(source))
    else:
        raise TypeError(f"upkern source must be a model, a state_dict or a checkpoint path, "
                        f"got {type(source).__name__}")
    return convert_state_dict(state, source="monai") if is_monai_state_dict(state) else state


def resize_kernel(weight: torch.Tensor, spatial: tuple) -> torch.Tensor:
    """Trilinear (bilinear in 2-D) resize of conv kernels, align_corners=False, as the official UpKern.

    The weight is treated as a batch of C_out images with C_in/groups channels; values are not rescaled.
    """
    mode = {3: "trilinear", 2: "bilinear"}[len(spatial)]
    resized = F.interpolate(weight.detach().float(), size=tuple(spatial), mode=mode, align_corners=False)
    return resized.to(weight.dtype)


@torch.no_grad()
def upkern(target: nn.Module, source, *, allow_shrink: bool = False) -> nn.Module:
    """Copy ``source`` weights into ``target``, resizing depthwise kernels of another spatial size.

    ``source``: a model, a state_dict (official or MONAI layout) or a checkpoint path. Tensors of equal
    shape are copied; kernels whose channel dims match but whose spatial size differs (k3->k5, k3->k7,
    k5->k7, ...) are interpolated. UpKern grows kernels: a target kernel smaller than the source's (k7->k3)
    raises ValueError unless ``allow_shrink=True``, which interpolates it down the same way. Raises if a
    target key is missing from the source or shapes differ otherwise; ``target`` is unchanged when it
    raises. Returns ``target``.
    """
    state = _source_state_dict(source)
    target_state = target.state_dict()
    missing = [key for key in target_state if key not in state]
    if missing:
        shown = ", ".join(missing[:5]) + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else "")
        raise KeyError(f"upkern: {len(missing)} target key(s) missing from the source: {shown}. "
                       "Were both models built with the same deep_supervision / variant?")
    new_state, shrunk = {}, []
    for key, dest in target_state.items():
        src = state[key]
        if src.shape == dest.shape:
            new_state[key] = src
        elif src.dim() == dest.dim() >= 3 and src.shape[:2] == dest.shape[:2]:
            if any(d < s for d, s in zip(dest.shape[2:], src.shape[2:])):
                shrunk.append(f"{key} {_kernel(src)} -> {_kernel(dest)}")
            new_state[key] = resize_kernel(src, dest.shape[2:])
        else:
            raise ValueError(f"upkern: {key} has shape {tuple(src.shape)} in the source but "
                             f"{tuple(dest.shape)} in the target; only kernel sizes may differ")
    if shrunk and not allow_shrink:
        shown = ", ".join(shrunk[:3]) + (f" (and {len(shrunk) - 3} more)" if len(shrunk) > 3 else "")
        raise ValueError(f"upkern: {len(shrunk)} target kernel(s) are smaller than the source's ({shown}); "
                         "UpKern initialises a larger kernel from a smaller one. Build the target with kernels "
                         "at least as large, or pass allow_shrink=True to interpolate them down")
    target.load_state_dict(new_state, strict=True)
    return target


def _kernel(t: torch.Tensor) -> str:
    return "x".join(map(str, t.shape[2:]))
