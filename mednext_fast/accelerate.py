"""accelerate(model): put an existing MedNeXt (ours, the official class, or MONAI's) on the fused kernels.

Blocks are found by structure (conv1, norm, conv2, act, conv3; a stride-2 conv1 marks a down block, a
transposed conv1 an up block), not by import. A foreign block is replaced by one of our block classes that
holds the very same sub-modules, so parameters, state_dict keys and optimizer state are unchanged, but only
when it computes exactly what our block computes (``_mismatch``): exact GELU, GroupNorm with one group per
channel and affine parameters, boolean residual flags, a depthwise odd k <= 7 conv1 with padding k//2,
dilation 1 and stride 1 (2 when resampling), 1x1x1 conv2/conv3 with biases, a 1x1x1 stride-2 ``res_conv``
with bias when resampling, no GRN, no sub-module, parameter or hook we do not know, and, on a probe input,
the same output as before. Every other block stays exactly as it was; our own blocks the fused ops cannot
run (GRN, layer norm, 2-D, grouped conv1) stay on PyTorch. One warning lists each kept block and why.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn as nn

from . import backends
from .blocks import MedNeXtBlock, MedNeXtDownBlock, MedNeXtUpBlock
from .ops import MAX_KERNEL

_PARTS = ("conv1", "norm", "conv2", "act", "conv3")


def _kind(module: nn.Module) -> str | None:
    if not all(hasattr(module, part) for part in _PARTS):
        return None
    conv1 = module.conv1
    if isinstance(conv1, (nn.ConvTranspose3d, nn.ConvTranspose2d)):
        return "up"
    if isinstance(conv1, (nn.Conv3d, nn.Conv2d)):
        return "down" if conv1.stride[0] == 2 else "block"
    return None


def _has_grn(module: nn.Module) -> bool:
    return bool(getattr(module, "grn", False) or getattr(module, "global_resp_norm", False))


def _conv_mismatch(name: str, conv: nn.Module, cls: type, in_channels: int, out_channels: int | None,
                   kernel: int, stride: int, padding: int, groups: int, bias: bool = True) -> str | None:
    """Why ``conv`` is not exactly ``cls(in_channels, out_channels, kernel, stride, padding, groups)`` with
    dilation 1, zero padding and (if ``bias``) a bias, or None."""
    if type(conv) is not cls:
        return f"{name} is {type(conv).__name__}, not nn.{cls.__name__}"
    want = dict(in_channels=in_channels, kernel_size=(kernel,) * 3, stride=(stride,) * 3,
                padding=(padding,) * 3, dilation=(1,) * 3, groups=groups, padding_mode="zeros")
    if out_channels is not None:
        want["out_channels"] = out_channels
    if cls is nn.ConvTranspose3d:
        want["output_padding"] = (0,) * 3
    for attr, value in want.items():
        if getattr(conv, attr) != value:
            return f"{name}.{attr} is {getattr(conv, attr)!r}, the fused block needs {value!r}"
    if bias and conv.bias is None:
        return f"{name} has no bias (the fused norm_mlp needs one)"
    return None


def _mismatch(module: nn.Module, kind: str) -> str | None:
    """None if ``module`` is, structurally, our block of ``kind`` on the fused ops; else why it is not."""
    if _has_grn(module):
        return "grn=True is not fused"
    conv1, norm, conv2, act, conv3 = (getattr(module, part) for part in _PARTS)
    if not isinstance(conv1, (nn.Conv3d, nn.ConvTranspose3d)):
        return "the fused ops are 3-D only (a 2-D block runs on PyTorch)"
    # Residual flags first: they decide which sub-modules the block may have.
    if not hasattr(module, "do_res"):
        return "it has no do_res attribute, so its residual is unknown"
    if not isinstance(module.do_res, bool):
        return f"do_res is {module.do_res!r}, not a bool"
    resample_res = False
    if kind != "block":
        if module.do_res:
            return "a resampling block with do_res=True (an identity residual across a resolution change)"
        if not isinstance(getattr(module, "resample_do_res", None), bool):
            return "a resampling block needs a bool resample_do_res attribute"
        resample_res = module.resample_do_res
    known = set(_PARTS) | ({"res_conv"} if resample_res else set())
    unknown = [name for name, _ in module.named_children() if name not in known]
    unknown += [name for name, _ in module.named_parameters(recurse=False)]
    unknown += [name for name, _ in module.named_buffers(recurse=False)]
    if unknown:
        return f"it has sub-modules or tensors the fused block does not have ({', '.join(unknown)})"
    if module._forward_hooks or module._forward_pre_hooks or module._backward_hooks:
        return "it has hooks, which re-classing would drop"
    if type(act) is not nn.GELU or act.approximate != "none":
        shown = f"GELU(approximate={act.approximate!r})" if isinstance(act, nn.GELU) else type(act).__name__
        return f"its activation is {shown}, not the exact GELU (nn.GELU(approximate='none'))"
    c = conv1.in_channels
    if type(norm) is not nn.GroupNorm:
        return f"its norm is {type(norm).__name__}, not nn.GroupNorm with one group per channel"
    if norm.num_channels != c or norm.num_groups != c:
        return (f"its GroupNorm has {norm.num_groups} group(s) over {norm.num_channels} channels; the fused "
                f"block needs one group per channel ({c})")
    if not norm.affine:
        return "its GroupNorm has affine=False"
    k = conv1.kernel_size[0]
    if len(set(conv1.kernel_size)) != 1 or k % 2 == 0 or k > MAX_KERNEL:
        return f"conv1.kernel_size is {conv1.kernel_size}; the fused ops take cubic odd sizes up to {MAX_KERNEL}"
    conv1_cls = nn.ConvTranspose3d if kind == "up" else nn.Conv3d
    # conv1 may lack a bias: dwconv_stats takes bias=None.
    why = _conv_mismatch("conv1", conv1, conv1_cls, c, c, k, 1 if kind == "block" else 2, k // 2, c, bias=False) \
        or _conv_mismatch("conv2", conv2, nn.Conv3d, c, None, 1, 1, 0, 1) \
        or _conv_mismatch("conv3", conv3, nn.Conv3d, conv2.out_channels, None, 1, 1, 0, 1)
    if why is not None:
        return why
    if kind == "block" and module.do_res and conv3.out_channels != c:
        return f"do_res=True but conv3 maps {c} to {conv3.out_channels} channels"
    if resample_res:
        res_cls = nn.ConvTranspose3d if kind == "up" else nn.Conv3d
        return _conv_mismatch("res_conv", getattr(module, "res_conv", None), res_cls, c, conv3.out_channels,
                              1, 2, 0, 1)
    return None


def _adopt(module: nn.Module, kind: str) -> MedNeXtBlock:
    """One of our blocks sharing ``module``'s sub-modules (no parameter is copied)."""
    cls = {"block": MedNeXtBlock, "down": MedNeXtDownBlock, "up": MedNeXtUpBlock}[kind]
    block = cls.__new__(cls)
    nn.Module.__init__(block)
    for part in _PARTS:
        setattr(block, part, getattr(module, part))
    if kind == "block":
        block.do_res = module.do_res
    else:
        block.do_res = False
        block.resample_do_res = module.resample_do_res
        if block.resample_do_res:
            block.res_conv = module.res_conv
    block.dim = "3d"
    block.grn = False
    block.training = module.training
    block.backend = "torch"
    return block


def _probe_mismatch(module: nn.Module, block: MedNeXtBlock, kind: str) -> str | None:
    """None if ``block`` (reference path) gives ``module``'s output on a small random input, else why not."""
    weight = block.conv1.weight
    if weight.device.type == "meta":
        return None
    size = 3 if kind == "up" else 6
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((2, block.conv1.in_channels) + (size,) * 3, generator=generator)
    x = x.to(device=weight.device, dtype=weight.dtype)
    devices = [weight.device.index or 0] if weight.device.type == "cuda" else []
    with torch.no_grad(), torch.random.fork_rng(devices=devices), \
            torch.autocast(weight.device.type, enabled=False):
        try:
            want = module(x)
        except Exception as err:  # a forward that needs other arguments is not one of ours
            return f"its forward fails on a probe input ({type(err).__name__}: {err})"
        got = block(x, ops=None)
    if not isinstance(want, torch.Tensor) or want.shape != got.shape or want.dtype != got.dtype:
        shown = tuple(want.shape) if isinstance(want, torch.Tensor) else type(want).__name__
        return f"its forward returns {shown} where the MedNeXt block returns {tuple(got.shape)}"
    tol = 1e-5 if weight.dtype in (torch.float32, torch.float64) else 1e-2
    err = (want - got).abs().max().item() if want.numel() else 0.0
    if not err <= tol * (1.0 + want.abs().max().item()):
        return f"its forward computes something else than the MedNeXt block (max abs difference {err:.3g})"
    return None


def accelerate(model: nn.Module, backend: str = "auto") -> nn.Module:
    """Switch every MedNeXt block of ``model`` to ``backend`` in place and return ``model``.

    A block that is not one of ours is re-classed only if it computes exactly what ours computes (see the
    module docstring); any other stays as it was, module and output unchanged, and one UserWarning lists
    every block left on PyTorch with the reason.
    """
    backends.check_name(backend)
    if backend not in ("auto", "torch"):
        backends.load(backend)  # fail now, naming what is missing
    kept = []
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            kind = _kind(child)
            if kind is None:
                continue
            full_name = f"{parent_name}.{child_name}" if parent_name else child_name
            if not isinstance(child, MedNeXtBlock):
                why = _mismatch(child, kind)
                block = None
                if why is None:
                    block = _adopt(child, kind)
                    why = _probe_mismatch(child, block, kind)
                if why is not None:
                    kept.append((full_name, f"{why} (left as {type(child).__name__})"))
                    continue
                child = block
                setattr(parent, child_name, child)
            why = child.fusable()
            if why is not None:
                kept.append((full_name, why))
                child.backend = "torch"
            else:
                child.backend = backend
    if kept:
        order = {name: i for i, (name, _) in enumerate(model.named_modules())}
        kept.sort(key=lambda item: order.get(item[0], len(order)))
        listed = "; ".join(f"{name}: {why}" for name, why in kept)
        warnings.warn(f"accelerate: {len(kept)} block(s) stay on PyTorch: {listed}", stacklevel=2)
    if hasattr(model, "backend") and isinstance(getattr(model, "backend"), str):
        model.backend = backend
    return model
