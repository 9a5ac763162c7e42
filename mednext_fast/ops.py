"""Plain-PyTorch reference of every fused op: the contract that each backend kernel implements.

A MedNeXt block is two fused ops:

* ``dwconv_stats``: depthwise conv (stride 1, stride 2, or stride-2 transposed) that also returns the
  per-(sample, channel) sum and sum of squares of its output, in fp32 (the GroupNorm statistics).
* ``norm_mlp``: GroupNorm-apply (groups == channels) -> 1x1x1 expansion -> GELU (exact erf) ->
  1x1x1 compression -> optional residual add.

Backends (``kernels/`` Triton ops, ``csrc/`` C++ ops) expose functions with exactly these signatures and
are tested against these references. Tensors are NC[D]HW in the logical sense; a backend may use any
memory layout inside.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def dwconv_stats(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 stride: int = 1, transposed: bool = False):
    """Depthwise conv with padding k//2 plus GroupNorm statistics of its output.

    x: (N, C, *spatial); weight: (C, 1, k, ..., k) with odd k; bias: (C,) or None.
    stride=1 keeps the size; stride=2 gives ceil(n/2); transposed=True (stride 2) gives 2n-1
    (no front padding: the up block pads after the whole block).
    Returns (y, s1, s2): y in x's dtype, s1 = sum(y) and s2 = sum(y*y) over spatial dims, fp32, (N, C).
    """
    channels, k, nd = x.shape[1], weight.shape[2], x.dim() - 2
    if transposed:
        conv_t = F.conv_transpose3d if nd == 3 else F.conv_transpose2d
        y = conv_t(x, weight, bias, stride=2, padding=k // 2, groups=channels)
    else:
        conv = F.conv3d if nd == 3 else F.conv2d
        y = conv(x, weight, bias, stride=stride, padding=k // 2, groups=channels)
    y32 = y.float()
    dims = tuple(range(2, y.dim()))
    return y, y32.sum(dims), (y32 * y32).sum(dims)


def norm_mlp(y: torch.Tensor, s1: torch.Tensor, s2: torch.Tensor,
             gamma: torch.Tensor, beta: torch.Tensor,
             w_expand: torch.Tensor, b_expand: torch.Tensor,
             w_compress: torch.Tensor, b_compress: torch.Tensor,
             residual: torch.Tensor | None = None, eps: float = 1e-5):
    """GroupNorm(groups=C) from precomputed statistics, then the inverted-bottleneck MLP.

    y: (N, C, *spatial); s1, s2: fp32 (N, C) sums of y and y*y over spatial dims;
    gamma, beta: (C,); w_expand: (R*C, C[, 1, 1, 1]); b_expand: (R*C,);
    w_compress: (C_out, R*C[, 1, 1, 1]); b_compress: (C_out,); residual: (N, C_out, *spatial) or None.
    Returns (N, C_out, *spatial) in y's dtype (or autocast's).
    """
    count = y[0, 0].numel()
    mean = s1 / count
    var = (s2 / count - mean * mean).clamp_min(0)
    rstd = torch.rsqrt(var + eps)
    view = (*mean.shape, *([1] * (y.dim() - 2)))
    scale = (rstd * gamma.float()).view(view)
    shift = (beta.float() - mean * rstd * gamma.float()).view(view)
    z = (y.float() * scale + shift).to(y.dtype)
    nd = y.dim() - 2
    conv = F.conv3d if nd == 3 else F.conv2d
    w_e = w_expand.reshape(*w_expand.shape[:2], *([1] * nd))
    w_c = w_compress.reshape(*w_compress.shape[:2], *([1] * nd))
    out = conv(F.gelu(conv(z, w_e, b_expand)), w_c, b_compress)
    if residual is not None:
        out = out + residual
    return out
