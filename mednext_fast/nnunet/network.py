"""The MedNeXt an nnU-Net trainer builds, its deep-supervision switch, and the patch checks.

No nnunetv2 import here: the plans command, the checkpoint loader and the trainers share these.
"""
from __future__ import annotations

import re

import torch.nn as nn

from mednext_fast import backends
from mednext_fast.checks import DIVISOR, trainable_size
from mednext_fast.configs import KERNEL_SIZES, VARIANTS, variant_config
from mednext_fast.model import MedNeXt

# Trainer names carry the paper variant and kernel; subclasses may add a suffix (..._B_k3_lr1e4).
TRAINER_NAME = re.compile(r"^nnUNetTrainerMedNeXt_([SBML])_k(\d+)(?:_|$)")
# MedNeXt constructor arguments an nnU-Net configuration's architecture.arch_kwargs may hold. nnU-Net itself
# reads arch_kwargs['strides'] (as the configuration's pool_op_kernel_sizes), so that key is kept there too.
ARCH_KEYS = ("n_channels", "exp_r", "kernel_size", "enc_kernel_size", "dec_kernel_size", "do_res", "do_res_up_down",
             "checkpoint_style", "block_counts", "norm_type", "dim", "grn")
STRIDES = [[1, 1, 1]] + [[2, 2, 2]] * 4  # stem + four 2x down-samplings, for nnU-Net's pool_op_kernel_sizes
HEADS = ("out_1", "out_2", "out_3", "out_4")


def config_for_trainer_name(name: str) -> dict | None:
    """MedNeXt kwargs of a trainer named nnUNetTrainerMedNeXt_{V}_k{K}[_suffix], else None."""
    match = TRAINER_NAME.match(name)
    if match is None or int(match.group(2)) not in KERNEL_SIZES:
        return None
    return variant_config(match.group(1), int(match.group(2)))


def config_from_arch_kwargs(arch_kwargs: dict, where: str) -> dict:
    """MedNeXt kwargs from a plans configuration's architecture.arch_kwargs (as the plans command writes them)."""
    config = {k: v for k, v in arch_kwargs.items() if k in ARCH_KEYS}
    if "n_channels" not in config:
        raise ValueError(f"{where}: the configuration's architecture is not a MedNeXt (arch_kwargs has no "
                         f"n_channels; keys: {sorted(arch_kwargs)}). Add a MedNeXt configuration with "
                         "`python -m mednext_fast.nnunet plans -d DATASET`, or train a nnUNetTrainerMedNeXt_{S,B,M,L}"
                         "_k{3,5,7} trainer, whose architecture comes from its name")
    return config


def arch_entry(variant: str = "B", kernel_size: int = 3, config: dict | None = None) -> dict:
    """The 'architecture' entry of a MedNeXt configuration in nnU-Net's plans format."""
    kwargs = dict(config if config is not None else variant_config(variant, kernel_size))
    kwargs["strides"] = [list(s) for s in STRIDES]
    return {"network_class_name": "mednext_fast.MedNeXt", "arch_kwargs": kwargs, "_kw_requires_import": []}


def patch_problem(patch, name: str = "this configuration") -> str | None:
    """Why ``patch`` cannot train MedNeXt (message naming the fix), or None if it can."""
    patch = [int(p) for p in patch]
    if len(patch) != 3:
        return (f"{name} has a {len(patch)}-D patch {patch}; the nnU-Net MedNeXt trainers are 3-D. Use a 3d "
                "configuration (the plans command adds one: `python -m mednext_fast.nnunet plans -d DATASET`)")
    bad = [p for p in patch if p <= 0 or p % DIVISOR]
    if bad:
        fixed = [max(DIVISOR, int(p / DIVISOR + 0.5) * DIVISOR) for p in patch]  # nearest, ties up
        return (f"{name} has patch size {'x'.join(map(str, patch))}, not divisible by {DIVISOR} along every axis "
                f"(MedNeXt down-samples 4 times and adds skips of equal size). Use e.g. "
                f"{'x'.join(map(str, fixed))}: `python -m mednext_fast.nnunet plans -d DATASET --patch "
                f"{' '.join(map(str, fixed))}` writes such a configuration")
    if not trainable_size(patch):
        return (f"{name} has patch size {'x'.join(map(str, patch))}, whose 1/16 bottleneck is one voxel: GroupNorm "
                "cannot train there. Use at least 32 along one axis (e.g. 16x16x32; the paper uses 128x128x128)")
    return None


def check_patch(patch, name: str = "this configuration") -> None:
    problem = patch_problem(patch, name)
    if problem:
        raise ValueError(problem)


def build(config: dict, in_channels: int, n_classes: int, deep_supervision: bool, backend: str = "auto") -> MedNeXt:
    """Our MedNeXt for nnU-Net: the deep-supervision heads always exist, ``deep_supervision`` only switches them.

    nnU-Net rebuilds the network with deep supervision off for inference and then loads the training
    checkpoint strictly, so the heads (out_1..out_4) must be there either way; ``do_ds`` decides whether the
    forward returns them. Unused heads and the official ``dummy_tensor`` (never in the forward) take no
    gradient, so DDP finds no parameter that went unused.
    """
    model = MedNeXt(in_channels=in_channels, n_classes=n_classes, deep_supervision=True, backend=backend, **config)
    # Look the fused backends up now: nnU-Net compiles the network before its first forward, and a first
    # lookup inside the trace would import modules there (a graph break); afterwards it is a dict read.
    for name in sorted(set(backends.AUTO.values())):
        backends.is_available(name)
    set_deep_supervision(model, deep_supervision)
    model.dummy_tensor.requires_grad_(False)
    for head in HEADS:
        getattr(model, head).requires_grad_(deep_supervision)
    return model


def unwrap(module: nn.Module) -> nn.Module:
    """The MedNeXt under DDP (.module) and torch.compile (._orig_mod) wrappers."""
    while True:
        if isinstance(module, MedNeXt):
            return module
        inner = getattr(module, "module", None)  # no `or`: a wrapper's truth value would call len()
        if inner is None:
            inner = getattr(module, "_orig_mod", None)
        if inner is None:
            raise TypeError("expected a MedNeXt (possibly wrapped by DDP / torch.compile), "
                            f"got {type(module).__name__}")
        module = inner


def set_deep_supervision(module: nn.Module, enabled: bool) -> None:
    """Our model's switch is ``do_ds`` (nnU-Net's default trainer sets ``.decoder.deep_supervision``)."""
    unwrap(module).do_ds = bool(enabled)


def describe(config: dict) -> str:
    """'MedNeXt-B k3' for a paper variant's kwargs, else the kwargs."""
    for name in VARIANTS:
        for k in KERNEL_SIZES:
            if config == variant_config(name, k):
                return f"MedNeXt-{name} k{k}"
    return f"MedNeXt({', '.join(f'{k}={v}' for k, v in config.items())})"
