"""MedNeXt: the official constructor, state_dict layout and forward, plus the backend switch."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from . import backends
from .blocks import MedNeXtBlock, MedNeXtDownBlock, MedNeXtUpBlock, OutBlock, _conv
from .checks import check_input

_LEVELS = 4  # down/up-sampling steps; inputs must be divisible by 2**_LEVELS


class MedNeXt(nn.Module):
    """MedNeXt (Roy et al., MICCAI 2023) with the official ``MedNeXt`` constructor and state_dict.

    ``kernel_size`` (if not None) overrides ``enc_kernel_size`` and ``dec_kernel_size``; the encoder and
    down blocks use the encoder kernel, the bottleneck, up and decoder blocks the decoder kernel.
    ``exp_r`` and ``block_counts`` have 9 entries (enc 0-3, bottleneck, dec 3-0); down block i takes the
    ratio of stage i+1 (official) or of stage i (``monai_compat=True``, MONAI's shapes, no GRN in any
    down block). With ``deep_supervision`` the forward returns [full, 1/2, 1/4, 1/8, 1/16] resolution
    logits whenever ``self.do_ds`` is true, in train and eval mode alike.
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
        exp_r = [exp_r] * 9 if isinstance(exp_r, int) else list(exp_r)
        block_counts = list(block_counts)
        if len(exp_r) != 9 or len(block_counts) != 9:
            raise ValueError(f"exp_r and block_counts need 9 entries, got {len(exp_r)} and {len(block_counts)}")

        self.in_channels, self.n_classes, self.dim = in_channels, n_classes, dim
        self.do_ds = deep_supervision
        self.outside_block_checkpointing = checkpoint_style == "outside_block"
        self.block_counts = block_counts
        conv = _conv(dim)
        widths = [n_channels * 2 ** i for i in range(_LEVELS + 1)]

        def stage(width, ratio, kernel, count):
            return nn.Sequential(*[MedNeXtBlock(width, width, ratio, kernel, do_res=do_res, norm_type=norm_type,
                                                dim=dim, grn=grn) for _ in range(count)])

        # Registration order below is the official state_dict order.
        self.stem = conv(in_channels, n_channels, kernel_size=1)
        for i in range(_LEVELS):
            setattr(self, f"enc_block_{i}", stage(widths[i], exp_r[i], enc_kernel_size, block_counts[i]))
            down_ratio = exp_r[i] if monai_compat else exp_r[i + 1]
            down_grn = grn and i > 0 and not monai_compat  # official quirk: down_0 never gets GRN
            setattr(self, f"down_{i}", MedNeXtDownBlock(widths[i], widths[i + 1], down_ratio, enc_kernel_size,
                                                        do_res=do_res_up_down, norm_type=norm_type, dim=dim,
                                                        grn=down_grn))
        self.bottleneck = stage(widths[4], exp_r[4], dec_kernel_size, block_counts[4])
        for i in reversed(range(_LEVELS)):
            j = 8 - i  # exp_r / block_counts index of decoder stage i
            setattr(self, f"up_{i}", MedNeXtUpBlock(widths[i + 1], widths[i], exp_r[j], dec_kernel_size,
                                                    do_res=do_res_up_down, norm_type=norm_type, dim=dim, grn=grn))
            setattr(self, f"dec_block_{i}", stage(widths[i], exp_r[j], dec_kernel_size, block_counts[j]))
        self.out_0 = OutBlock(widths[0], n_classes, dim)
        # Kept for state_dict compatibility: the official reentrant checkpointing needed a grad-requiring
        # input. Our checkpointing is non-reentrant and never uses it.
        self.dummy_tensor = nn.Parameter(torch.tensor([1.0]), requires_grad=True)
        if deep_supervision:
            for i in range(1, _LEVELS + 1):
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
    def _run(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.outside_block_checkpointing and torch.is_grad_enabled():
            return checkpoint(module, x, use_reentrant=False)
        return module(x)

    def _stage_step(self, block: MedNeXtBlock, x: torch.Tensor, spare: torch.Tensor | None):
        """Runs one stage block; returns (output, spare for the next block). On an inference-only backend
        the input is dead once its block ran, so it is kept to take the next block's depthwise output
        (no fresh allocation, no page faults); elsewhere nothing is kept (spare None)."""
        if spare is not None:
            out = block(x, scratch=spare)
        else:
            out = self._run(block, x)
        return out, (x if backends.reuses_buffers(backends.ops_for(block, x)) else None)

    def _up(self, up: MedNeXtUpBlock, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """skip + up(x); inference-only backends write it into skip, a stage output nothing else holds."""
        ops = backends.ops_for(up, x)
        if backends.reuses_buffers(ops):
            return up.add_into_(skip, x, ops)
        return skip + self._run(up, x)

    def forward(self, x: torch.Tensor):
        check_input(self, x)
        if backends.cpp_under_cpu_autocast(self.down_0, x):
            # The fused C++ ops are fp32 (their outputs would meet autocast's bf16 convolutions): run
            # with autocast off and, where autocast asks for bf16 and the CPU has it natively, the wide
            # layers' GEMMs in bf16 (cpp_ops.norm_mlp).
            from . import cpp_ops
            bf16 = torch.get_autocast_dtype("cpu") == torch.bfloat16 and cpp_ops.native_bf16()
            with torch.autocast("cpu", enabled=False), cpp_ops.gemms_in_bf16(bf16):
                return self._forward(x)
        return self._forward(x)

    def _forward(self, x: torch.Tensor):
        if (not torch.is_grad_enabled() and isinstance(self.stem, nn.Conv3d)
                and backends.reuses_buffers(backends.ops_for(self.down_0, x))):
            # The fused CPU ops work channels-last. The 1x1x1 stem is a per-voxel linear map: computed as
            # one, its output is channels-last at once (1x1x128^3 -> 32 channels: 184 -> 80 ms, and no
            # second full-resolution tensor for a layout copy).
            x = F.linear(x.movedim(1, -1), self.stem.weight.flatten(1), self.stem.bias).movedim(-1, 1)
        else:
            x = self.stem(x)
            if backends.reuses_buffers(backends.ops_for(self.down_0, x)):
                x = x.contiguous(memory_format=torch.channels_last_3d)
        # Stages loop here rather than in a helper, whose caller would keep each stage's input alive.
        skips = []
        for i in range(_LEVELS):
            spare = None
            for block in getattr(self, f"enc_block_{i}"):
                x, spare = self._stage_step(block, x, spare)
            skips.append(x)
            spare = None  # freed before the down block allocates
            x = self._run(getattr(self, f"down_{i}"), x)
        for block in self.bottleneck:
            x, spare = self._stage_step(block, x, spare)
        spare = None
        ds = []
        if self.do_ds:
            ds.append(self._run(self.out_4, x))
        for i in reversed(range(_LEVELS)):
            x = self._up(getattr(self, f"up_{i}"), x, skips.pop())
            for block in getattr(self, f"dec_block_{i}"):
                x, spare = self._stage_step(block, x, spare)
            spare = None
            if self.do_ds and i > 0:
                ds.append(self._run(getattr(self, f"out_{i}"), x))
        x = self._run(self.out_0, x)
        if self.do_ds:
            return [x] + ds[::-1]
        return x
