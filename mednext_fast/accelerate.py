"""accelerate(model): put an existing MedNeXt (ours, the official class, or MONAI's) on the fused kernels.

Blocks are recognised by structure (conv1, norm, conv2, act, conv3; a stride-2 conv1 marks a down block,
a transposed conv1 an up block), not by import. A foreign block is replaced by one of our block classes
that holds the very same sub-modules, so parameters, state_dict keys and optimizer state are unchanged.
Blocks the fused ops cannot run (GRN, layer norm, 2-D, grouped conv1) stay as they are, with one warning.
"""
from __future__ import annotations

import warnings

import torch.nn as nn

from . import backends
from .blocks import MedNeXtBlock, MedNeXtDownBlock, MedNeXtUpBlock

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


def _adopt(module: nn.Module, kind: str) -> MedNeXtBlock:
    """One of our blocks sharing ``module``'s sub-modules (no parameter is copied)."""
    cls = {"block": MedNeXtBlock, "down": MedNeXtDownBlock, "up": MedNeXtUpBlock}[kind]
    block = cls.__new__(cls)
    nn.Module.__init__(block)
    for part in _PARTS:
        setattr(block, part, getattr(module, part))
    if kind == "block":
        block.do_res = bool(module.do_res)
    else:
        block.do_res = False
        block.resample_do_res = bool(getattr(module, "resample_do_res", False))
        if block.resample_do_res:
            block.res_conv = module.res_conv
    block.dim = "3d" if isinstance(module.conv1, (nn.Conv3d, nn.ConvTranspose3d)) else "2d"
    block.grn = False
    block.training = module.training
    return block


def accelerate(model: nn.Module, backend: str = "auto") -> nn.Module:
    """Switch every MedNeXt block of ``model`` to ``backend`` in place and return ``model``."""
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
                if _has_grn(child):
                    kept.append((full_name, "grn=True is not fused"))
                    continue
                child = _adopt(child, kind)
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
