"""MedNeXt: the official constructor, state_dict layout and forward, plus the backend switch.

The forward asks ``backends.select`` once which backend runs it; a backend with its own whole-model runner
(``cpp`` inference) gets the model, every other runs ``forward_modules`` with its ops in every block.
"""
from __future__ import annotations

import operator
from typing import Sequence

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from . import backends
from .blocks import MedNeXtBlock, MedNeXtDownBlock, MedNeXtUpBlock, OutBlock, _conv
from .checks import check_input

LEVELS = 4  # down/up-sampling steps; inputs must be divisible by 2**LEVELS


def _check_kernel_size(what: str, value) -> None:
    """Kernel sizes are odd positive ints; see the MedNeXt docstring for which backends run which."""
    try:
        k = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        k = None
    if k is not None and k >= 1 and k % 2 == 1:
        return
    fix = f"use {k - 1} or {k + 1}" if k is not None and k > 1 else "use 3, 5 or 7"
    raise ValueError(f"{what} must be an odd positive int (the depthwise convs pad k//2 per side, so an even "
                     f"kernel changes the spatial size), got {value!r}; {fix} (3, 5 and 7 run on every backend)")


class MedNeXt(nn.Module):
    """MedNeXt (Roy et al., MICCAI 2023) with the official ``MedNeXt`` constructor and state_dict.

    ``kernel_size`` (if not None) overrides ``enc_kernel_size`` and ``dec_kernel_size``; the encoder and
    down blocks use the encoder kernel, the bottleneck, up and decoder blocks the decoder kernel.
    ``exp_r`` and ``block_counts`` have 9 entries (enc 0-3, bottleneck, dec 3-0); down block i takes the
    ratio of stage i+1 (official) or of stage i (``monai_compat=True``, MONAI's shapes, no GRN in any
    down block). With ``deep_supervision`` the forward returns [full, 1/2, 1/4, 1/8, 1/16] resolution
    logits whenever ``self.do_ds`` is true, in train and eval mode alike.

    Kernel sizes must be odd (the depthwise convs pad k//2 per side; an even k would change the spatial
    size): 3, 5 and 7 are the paper's and run on every backend. Odd sizes above 7 run on the PyTorch path
    only: ``backend='auto'`` runs those blocks on PyTorch, while the fused backends (``'triton'``, ``'cpp'``,
    odd k <= ``ops.MAX_KERNEL`` = 7) refuse them at construction.
    """

    def __init__(self, in_channels: int, n_channels: int, n_classes: int, exp_r: int | Sequence[int] = 4,
                 kernel_size: int | None = 7, enc_kernel_size: int | None = None,
                 dec_kernel_size: int | None = None, deep_supervision: bool = False, do_res: bool = False,
                 do_res_up_down: bool = False, checkpoint_style: str | None = None,
                 block_counts: Sequence[int] = (2,) * 9, norm_type: str = "group", dim: str = "3d",
                 grn: bool = False, backend: str = "auto", monai_compat: bool = False):
        super().__init__()
        if checkpoint_style not in (None, "outside_block"):
            raise ValueError(f"checkpoint_style must be None or 'outside_block', got {checkpoint_style!r}")
        if kernel_size is not None:
            enc_kernel_size = dec_kernel_size = kernel_size
        if enc_kernel_size is None or dec_kernel_size is None:
            raise ValueError("give kernel_size, or both enc_kernel_size and dec_kernel_size")
        for what, k in (("kernel_size" if kernel_size is not None else "enc_kernel_size", enc_kernel_size),
                        ("kernel_size" if kernel_size is not None else "dec_kernel_size", dec_kernel_size)):
            _check_kernel_size(what, k)
        exp_r = [exp_r] * 9 if isinstance(exp_r, int) else list(exp_r)
        block_counts = list(block_counts)
        if len(exp_r) != 9 or len(block_counts) != 9:
            raise ValueError(f"exp_r and block_counts need 9 entries, got {len(exp_r)} and {len(block_counts)}")

        self.in_channels, self.n_classes, self.dim = in_channels, n_classes, dim
        self.do_ds = deep_supervision
        self.outside_block_checkpointing = checkpoint_style == "outside_block"
        self.block_counts = block_counts
        conv = _conv(dim)
        widths = [n_channels * 2 ** i for i in range(LEVELS + 1)]

        def stage(width, ratio, kernel, count):
            return nn.Sequential(*[MedNeXtBlock(width, width, ratio, kernel, do_res=do_res, norm_type=norm_type,
                                                dim=dim, grn=grn) for _ in range(count)])

        # Registration order below is the official state_dict order.
        self.stem = conv(in_channels, n_channels, kernel_size=1)
        for i in range(LEVELS):
            setattr(self, f"enc_block_{i}", stage(widths[i], exp_r[i], enc_kernel_size, block_counts[i]))
            down_ratio = exp_r[i] if monai_compat else exp_r[i + 1]
            down_grn = grn and i > 0 and not monai_compat  # official quirk: down_0 never gets GRN
            setattr(self, f"down_{i}", MedNeXtDownBlock(widths[i], widths[i + 1], down_ratio, enc_kernel_size,
                                                        do_res=do_res_up_down, norm_type=norm_type, dim=dim,
                                                        grn=down_grn))
        self.bottleneck = stage(widths[4], exp_r[4], dec_kernel_size, block_counts[4])
        for i in reversed(range(LEVELS)):
            j = 8 - i  # exp_r / block_counts index of decoder stage i
            setattr(self, f"up_{i}", MedNeXtUpBlock(widths[i + 1], widths[i], exp_r[j], dec_kernel_size,
                                                    do_res=do_res_up_down, norm_type=norm_type, dim=dim, grn=grn))
            setattr(self, f"dec_block_{i}", stage(widths[i], exp_r[j], dec_kernel_size, block_counts[j]))
        self.out_0 = OutBlock(widths[0], n_classes, dim)
        # Kept for state_dict compatibility: the official reentrant checkpointing needed a grad-requiring
        # input. Our checkpointing is non-reentrant and never uses it.
        self.dummy_tensor = nn.Parameter(torch.tensor([1.0]), requires_grad=True)
        if deep_supervision:
            for i in range(1, LEVELS + 1):
                setattr(self, f"out_{i}", OutBlock(widths[i], n_classes, dim))
        self.set_backend(backend)

    # -- backend switch ---------------------------------------------------------------------------
    def blocks(self):
        """(name, block) for every MedNeXt block (stage blocks, down and up blocks)."""
        return [(name, m) for name, m in self.named_modules() if isinstance(m, MedNeXtBlock)]

    def set_backend(self, name: str) -> "MedNeXt":
        backends.validate(self.blocks(), name)
        self.backend = name
        for _, block in self.blocks():
            block.backend = name
        return self

    # -- forward ----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor):
        check_input(self, x)
        backend = backends.select(self, x)
        if backend is not None and backend.run_model is not None:
            return backend.run_model(self, x)
        return self.forward_modules(x, None if backend is None else backend.ops)

    def _call(self, module: nn.Module, x: torch.Tensor, **kwargs) -> torch.Tensor:
        if self.outside_block_checkpointing and torch.is_grad_enabled():
            return checkpoint(module, x, use_reentrant=False, **kwargs)
        return module(x, **kwargs)

    def forward_modules(self, x: torch.Tensor, ops=None):
        """The official forward, every block run with the fused ``ops`` (None: the reference path)."""
        x = self.stem(x)
        # Stage blocks run one by one here (not through the Sequential), so that no frame keeps a
        # stage's input alive while its later blocks run.
        skips = []
        for i in range(LEVELS):
            for block in getattr(self, f"enc_block_{i}"):
                x = self._call(block, x, ops=ops)
            skips.append(x)
            x = self._call(getattr(self, f"down_{i}"), x, ops=ops)
        for block in self.bottleneck:
            x = self._call(block, x, ops=ops)
        ds = [self._call(self.out_4, x)] if self.do_ds else []
        for i in reversed(range(LEVELS)):
            x = skips.pop() + self._call(getattr(self, f"up_{i}"), x, ops=ops)
            for block in getattr(self, f"dec_block_{i}"):
                x = self._call(block, x, ops=ops)
            if self.do_ds and i > 0:
                ds.append(self._call(getattr(self, f"out_{i}"), x))
        x = self._call(self.out_0, x)
        if self.do_ds:
            return [x] + ds[::-1]
        return x
