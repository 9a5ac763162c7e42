"""MedNeXt blocks with the official module names, shapes and forward semantics.

``reference`` runs the sub-modules exactly as the official code does and is what every backend is
tested against; ``fused`` runs the same parameters through the two fused ops ``dwconv_stats`` and
``norm_mlp`` of whichever backend the caller passes (contract: ``ops.py``).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import backends
from .ops import MAX_KERNEL


def _conv(dim: str, transposed: bool = False):
    if dim not in ("2d", "3d"):
        raise ValueError(f"dim must be '2d' or '3d', got {dim!r}")
    if dim == "3d":
        return nn.ConvTranspose3d if transposed else nn.Conv3d
    return nn.ConvTranspose2d if transposed else nn.Conv2d


class _OwnBackend:
    def __repr__(self):
        return "OWN_BACKEND"


OWN_BACKEND = _OwnBackend()  # a block's forward without ops: the block picks them from its own backend


class LayerNorm(nn.Module):
    """ConvNeXt-style LayerNorm over the channel dim only (the official ``norm_type='layer'``)."""

    def __init__(self, normalized_shape: int, eps: float = 1e-5, data_format: str = "channels_last"):
        super().__init__()
        if data_format not in ("channels_last", "channels_first"):
            raise ValueError(f"data_format must be 'channels_last' or 'channels_first', got {data_format!r}")
        self.weight = nn.Parameter(torch.ones(normalized_shape))
        self.bias = nn.Parameter(torch.zeros(normalized_shape))
        self.eps = eps
        self.data_format = data_format
        self.normalized_shape = (normalized_shape,)

    def forward(self, x: torch.Tensor, dummy_tensor=None) -> torch.Tensor:
        if self.data_format == "channels_last":
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        view = (-1,) + (1,) * (x.dim() - 2)
        return self.weight.view(view) * x + self.bias.view(view)


class MedNeXtBlock(nn.Module):
    """Depthwise kxk(xk) conv -> norm -> 1x1 expansion (exp_r) -> GELU -> [GRN] -> 1x1 compression [+ x]."""

    # What the fused ops are told about this block's depthwise conv.
    stride, transposed = 1, False

    def __init__(self, in_channels: int, out_channels: int, exp_r: int = 4, kernel_size: int = 7,
                 do_res: bool = True, norm_type: str = "group", n_groups: int | None = None,
                 dim: str = "3d", grn: bool = False):
        super().__init__()
        conv = _conv(dim)
        self.do_res = do_res
        self.dim = dim
        self.conv1 = conv(in_channels, in_channels, kernel_size=kernel_size, stride=1,
                          padding=kernel_size // 2, groups=in_channels if n_groups is None else n_groups)
        if norm_type == "group":
            self.norm = nn.GroupNorm(num_groups=in_channels, num_channels=in_channels)
        elif norm_type == "layer":
            self.norm = LayerNorm(in_channels, data_format="channels_first")
        else:
            raise ValueError(f"norm_type must be 'group' or 'layer', got {norm_type!r}")
        self.conv2 = conv(in_channels, exp_r * in_channels, kernel_size=1)
        self.act = nn.GELU()
        self.conv3 = conv(exp_r * in_channels, out_channels, kernel_size=1)
        self.grn = grn
        if grn:
            shape = (1, exp_r * in_channels) + (1,) * (3 if dim == "3d" else 2)
            self.grn_beta = nn.Parameter(torch.zeros(shape))
            self.grn_gamma = nn.Parameter(torch.zeros(shape))
        # The backend this block picks when it is called on its own (a block of a model built elsewhere,
        # see accelerate); MedNeXt.forward decides once for all its blocks and passes the ops in.
        self.backend = "torch"

    def forward(self, x: torch.Tensor, dummy_tensor=None, ops=OWN_BACKEND) -> torch.Tensor:
        """``ops``: the fused ops to run with (their contract: ``mednext_fast/ops.py``), or None for the
        reference path; by default the block asks its own ``backend``."""
        if ops is OWN_BACKEND:
            ops = backends.ops_for(self, x)
        if ops is None or self.fusable() is not None:
            return self._finish(self.reference(x))
        return self._finish(self.fused(x, ops))

    # -- the reference path ------------------------------------------------------------------------
    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The official sub-module path (before the up block's front padding)."""
        x1 = self.act(self.conv2(self.norm(self.conv1(x))))
        if self.grn:
            gx = torch.norm(x1, p=2, dim=tuple(range(2, x1.dim())), keepdim=True)
            nx = gx / (gx.mean(dim=1, keepdim=True) + 1e-6)
            x1 = self.grn_gamma * (x1 * nx) + self.grn_beta + x1
        out = self.conv3(x1)
        residual = self.residual(x)
        return out if residual is None else out + residual

    def residual(self, x: torch.Tensor):
        """What is added to the main path (before the up block's front padding), or None."""
        return x if self.do_res else None

    def _finish(self, out: torch.Tensor) -> torch.Tensor:
        return out

    # -- the fused path ----------------------------------------------------------------------------
    def fusable(self) -> str | None:
        """None if the fused ops can run this block, else the reason they cannot."""
        if self.dim != "3d":
            return "the fused ops are 3-D only (dim='2d' runs on PyTorch)"
        if not isinstance(self.norm, nn.GroupNorm):
            return "norm_type='layer' is not fused"
        if self.grn:
            return "grn=True is not fused"
        if self.conv1.groups != self.conv1.in_channels:
            return "n_groups other than depthwise is not fused"
        if self.conv1.kernel_size[0] % 2 == 0 or self.conv1.kernel_size[0] > MAX_KERNEL:
            return f"only odd kernel sizes up to {MAX_KERNEL} are fused"
        # Sub-modules edited after construction: the fused ops compute exactly the constructor's block.
        if type(self.act) is not nn.GELU or self.act.approximate != "none":
            return f"activation {self.act!r} is not the exact GELU the fused ops compute"
        if self.norm.num_groups != self.norm.num_channels or not self.norm.affine:
            return "only an affine GroupNorm with one group per channel is fused"
        k = self.conv1.kernel_size[0]
        if self.conv1.padding != (k // 2,) * 3 or self.conv1.dilation != (1, 1, 1):
            return "the depthwise conv must have padding k // 2 and no dilation to be fused"
        if any(c.kernel_size != (1, 1, 1) or c.bias is None for c in (self.conv2, self.conv3)):
            return "the expansion and compression must be 1x1x1 convs with bias to be fused"
        return None

    def conv_params(self) -> dict:
        """This block's depthwise conv as ``dwconv_stats`` arguments."""
        return dict(weight=self.conv1.weight, bias=self.conv1.bias, stride=self.stride, transposed=self.transposed)

    def mlp_params(self) -> dict:
        """This block's norm, expansion and compression as ``norm_mlp`` arguments."""
        return dict(gamma=self.norm.weight, beta=self.norm.bias, w_expand=self.conv2.weight,
                    b_expand=self.conv2.bias, w_compress=self.conv3.weight, b_compress=self.conv3.bias,
                    eps=self.norm.eps)

    def fused(self, x: torch.Tensor, ops) -> torch.Tensor:
        """The block as the two fused ops (before the up block's front padding)."""
        y, s1, s2 = ops.dwconv_stats(x, **self.conv_params())
        return ops.norm_mlp(y, s1, s2, **self.mlp_params(), residual=self.residual(x))


class _ResampleBlock(MedNeXtBlock):
    """A block whose depthwise conv1 resamples by 2 (no identity residual; optional 1x1 ``res_conv``)."""

    stride = 2

    def __init__(self, in_channels: int, out_channels: int, exp_r: int = 4, kernel_size: int = 7,
                 do_res: bool = False, norm_type: str = "group", dim: str = "3d", grn: bool = False):
        super().__init__(in_channels, out_channels, exp_r, kernel_size, do_res=False,
                         norm_type=norm_type, dim=dim, grn=grn)
        conv = _conv(dim, transposed=self.transposed)
        self.resample_do_res = do_res
        if do_res:
            self.res_conv = conv(in_channels, out_channels, kernel_size=1, stride=2)
        # Replacing conv1 keeps its place in the state_dict, as in the official code.
        self.conv1 = conv(in_channels, in_channels, kernel_size=kernel_size, stride=2,
                          padding=kernel_size // 2, groups=in_channels)

    def residual(self, x):
        return self.res_conv(x) if self.resample_do_res else None


class MedNeXtDownBlock(_ResampleBlock):
    """2x down-sampling: stride-2 depthwise conv1 (n -> ceil(n/2)); ``res_conv`` is a stride-2 1x1 Conv."""


class MedNeXtUpBlock(_ResampleBlock):
    """2x up-sampling: stride-2 depthwise ConvTranspose conv1 (m -> 2m-1), then a one-voxel front pad.

    ``res_conv`` is a stride-2 1x1 ConvTranspose (weight layout (in, out, 1, 1, 1)). GroupNorm statistics
    exclude the padded planes, and every voxel with index 0 on any axis is exactly 0 (the official code
    pads after the whole block, residual included).
    """

    transposed = True

    def _finish(self, out):
        return F.pad(out, (1, 0) * (out.dim() - 2))


class OutBlock(nn.Module):
    """Segmentation head: a 1x1 ConvTranspose (weight layout (in_channels, n_classes, 1, 1, 1))."""

    def __init__(self, in_channels: int, n_classes: int, dim: str = "3d"):
        super().__init__()
        self.conv_out = _conv(dim, transposed=True)(in_channels, n_classes, kernel_size=1)

    def forward(self, x: torch.Tensor, dummy_tensor=None) -> torch.Tensor:
        return self.conv_out(x)
