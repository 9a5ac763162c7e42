"""MedNeXt blocks with the official module names, shapes and forward semantics.

The ``torch`` path runs the sub-modules exactly as the official code does and is the reference every
backend is tested against. Other backends (see ``backends.py``) run the same parameters through two
fused ops, ``dwconv_stats`` and ``norm_mlp`` (contract in ``ops.py``).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import backends


def _conv(dim: str, transposed: bool = False):
    if dim not in ("2d", "3d"):
        raise ValueError(f"dim must be '2d' or '3d', got {dim!r}")
    if dim == "3d":
        return nn.ConvTranspose3d if transposed else nn.Conv3d
    return nn.ConvTranspose2d if transposed else nn.Conv2d


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
        self.backend = "torch"

    # -- the reference path ------------------------------------------------------------------------
    def _main_path(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.act(self.conv2(self.norm(self.conv1(x))))
        if self.grn:
            gx = torch.norm(x1, p=2, dim=tuple(range(2, x1.dim())), keepdim=True)
            nx = gx / (gx.mean(dim=1, keepdim=True) + 1e-6)
            x1 = self.grn_gamma * (x1 * nx) + self.grn_beta + x1
        return self.conv3(x1)

    def _residual(self, x: torch.Tensor):
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
        if self.conv1.kernel_size[0] % 2 == 0 or self.conv1.kernel_size[0] > 7:
            return "only odd kernel sizes up to 7 are fused"
        return None

    def _fused_path(self, x: torch.Tensor, ops, scratch: torch.Tensor | None = None) -> torch.Tensor:
        conv = {}
        if scratch is not None and backends.reuses_buffers(ops) and self.stride == 1 and \
                scratch.shape == x.shape and scratch.is_contiguous(memory_format=torch.channels_last_3d):
            conv["out"] = scratch
        y, s1, s2 = ops.dwconv_stats(x, self.conv1.weight, self.conv1.bias,
                                     stride=self.stride, transposed=self.transposed, **conv)
        residual = self._residual(x)
        extra = {}
        if backends.reuses_buffers(ops):
            # No autograd keeps these buffers: write the output over y (same shape when the channels
            # match), else over a residual this block made itself (res_conv): one activation less.
            if y.shape[1] == self.conv3.out_channels:
                extra["out"] = y
            elif residual is not None and residual is not x and \
                    residual.is_contiguous(memory_format=torch.channels_last_3d):
                extra["out"] = residual
        return ops.norm_mlp(y, s1, s2, self.norm.weight, self.norm.bias,
                            self.conv2.weight, self.conv2.bias, self.conv3.weight, self.conv3.bias,
                            residual=residual, eps=self.norm.eps, **extra)

    def forward(self, x: torch.Tensor, dummy_tensor=None, scratch: torch.Tensor | None = None) -> torch.Tensor:
        """``scratch``: a dead activation of x's shape that an inference-only fused path may overwrite
        with its depthwise output (the model passes the previous block's input); ignored otherwise."""
        ops = backends.ops_for(self, x)
        if ops is None:
            out = self._main_path(x)
            residual = self._residual(x)
            if residual is not None:
                out = out + residual
        else:
            out = self._fused_path(x, ops, scratch)
        return self._finish(out)


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

    def _residual(self, x):
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
    # add_into_ works on chunks of this many bytes of the depthwise output.
    chunk_bytes = 8 * 2 ** 20

    def _finish(self, out):
        return F.pad(out, (1, 0) * (out.dim() - 2))

    def add_into_(self, skip: torch.Tensor, x: torch.Tensor, ops) -> torch.Tensor:
        """``skip + self(x)`` written into ``skip``, for inference-only backends (``ops.inference_only``).

        At full resolution the depthwise output has twice the output's channels; here it is never whole
        in memory: one statistics-only pass for the GroupNorm statistics (the op writes no output), a
        second that recomputes the output in chunks of planes and adds each chunk's MLP output into
        ``skip``. The front pad and the residual (bias everywhere, W^T x on even voxels) are written into
        ``skip`` directly, never materialised.
        """
        inner = skip[:, :, 1:, 1:, 1:]  # the official front pad puts the block's output after plane 0
        if self.resample_do_res:
            inner += self.res_conv.bias.view(-1, 1, 1, 1)
            inner[:, :, ::2, ::2, ::2] += F.conv3d(x, self.res_conv.weight.transpose(0, 1))
        depth, plane = inner.shape[2], x.shape[0] * x.shape[1] * inner.shape[3] * inner.shape[4] * 4
        step = max(torch.get_num_threads(), self.chunk_bytes // plane, 1)
        chunks = [(d, min(d + step, depth)) for d in range(0, depth, step)]
        conv = dict(weight=self.conv1.weight, bias=self.conv1.bias, stride=2, transposed=True)
        _, s1, s2 = ops.dwconv_stats(x, **conv, stats_only=True)
        for begin, end in chunks:
            y, _, _ = ops.dwconv_stats(x, **conv, planes=(begin, end))
            # norm_mlp divides the sums by the voxel count of the y it gets: scale them to this chunk.
            share = (end - begin) / depth
            inner[:, :, begin:end] += ops.norm_mlp(y, s1 * share, s2 * share, self.norm.weight, self.norm.bias,
                                                   self.conv2.weight, self.conv2.bias, self.conv3.weight,
                                                   self.conv3.bias, eps=self.norm.eps)
        return skip


class OutBlock(nn.Module):
    """Segmentation head: a 1x1 ConvTranspose (weight layout (in_channels, n_classes, 1, 1, 1))."""

    def __init__(self, in_channels: int, n_classes: int, dim: str = "3d"):
        super().__init__()
        self.conv_out = _conv(dim, transposed=True)(in_channels, n_classes, kernel_size=1)

    def forward(self, x: torch.Tensor, dummy_tensor=None) -> torch.Tensor:
        return self.conv_out(x)
