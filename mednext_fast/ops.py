"""The op contract: the two fused ops of a MedNeXt block, their plain-PyTorch references, and their checks.

A MedNeXt block is two ops:

* ``dwconv_stats``: depthwise conv (stride 1, stride 2, or stride-2 transposed) that also returns the
  per-(sample, channel) sum and sum of squares of its output, in fp32 (the GroupNorm statistics).
* ``norm_mlp``: GroupNorm-apply (groups == channels) -> 1x1x1 expansion -> GELU (exact erf) ->
  1x1x1 compression -> optional residual add.

Every backend (``kernels/`` Triton, ``mednext_fast/backends/cpp.py`` C++) exposes functions with these
signatures, validates its arguments with ``check_dwconv_stats`` / ``check_norm_mlp`` (adding only what
is its own: devices, dtypes, autograd) and is tested against the references below. A backend may leave
out the keyword-only options (``planes``, ``out``, ``stats_only``, ``count``); it then raises
``NotImplementedError`` naming the option. Options of one backend alone (cpp's ``bf16_gemms``) are
documented with it. Tensors are NC[D]HW in the logical sense; a backend may use any memory layout inside.
"""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F

MAX_KERNEL = 7  # the fused kernels unroll at most 7 taps per axis


def out_size(size: int, stride: int, transposed: bool) -> int:
    """Output length of one spatial axis: stride 1 keeps it, stride 2 gives ceil(n/2), transposed 2n-1."""
    if transposed:
        return 2 * size - 1
    return (size + 1) // 2 if stride == 2 else size


# -- dwconv_stats -------------------------------------------------------------------------------------------
def check_dwconv_stats(x, weight, bias, stride: int = 1, transposed: bool = False, planes=None, out=None,
                       stats_only: bool = False, name: str = "dwconv_stats") -> None:
    """Raise ValueError/TypeError naming the argument unless the call follows the contract below."""
    for what, t in (("x", x), ("weight", weight), ("bias", bias), ("out", out)):
        if (t is not None or what in ("x", "weight")) and not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: {what} must be a torch.Tensor, got {type(t).__name__}")
    if x.dim() not in (4, 5):
        raise ValueError(f"{name}: x must be (N, C, D, H, W) or (N, C, H, W), got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{name}: empty input of shape {tuple(x.shape)}")
    c, nd = x.shape[1], x.dim() - 2
    if weight.dim() != nd + 2 or weight.shape[0] != c or weight.shape[1] != 1 or len(set(weight.shape[2:])) != 1:
        raise ValueError(f"{name}: weight must be (C, 1{', k' * nd}) with C={c} (depthwise over x's channels), "
                         f"got {tuple(weight.shape)}")
    k = weight.shape[2]
    if k % 2 == 0 or k > MAX_KERNEL:
        raise ValueError(f"{name}: the kernel size must be odd k <= {MAX_KERNEL}, got {k}")
    if bias is not None and tuple(bias.shape) != (c,):
        raise ValueError(f"{name}: bias must be ({c},), got {tuple(bias.shape)}")
    if not transposed and stride not in (1, 2):
        raise ValueError(f"{name}: stride must be 1 or 2, got {stride}")
    out_dims = [out_size(v, stride, transposed) for v in x.shape[2:]]
    if planes is not None:
        begin, end = planes
        if not 0 <= begin < end <= out_dims[0]:
            raise ValueError(f"{name}: output planes {tuple(planes)} must satisfy 0 <= begin < end <= "
                             f"{out_dims[0]} (the output depth)")
        out_dims[0] = end - begin
    if stats_only and out is not None:
        raise ValueError(f"{name}: stats_only computes no output, so out must not be given")
    if out is not None and tuple(out.shape) != (x.shape[0], c, *out_dims):
        raise ValueError(f"{name}: out must be {(x.shape[0], c, *out_dims)}, got {tuple(out.shape)}")


def dwconv_stats(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int = 1,
                 transposed: bool = False, *, planes: tuple[int, int] | None = None,
                 out: torch.Tensor | None = None, stats_only: bool = False):
    """Depthwise conv with padding k//2 plus GroupNorm statistics of its output.

    x: (N, C, *spatial), 2 or 3 spatial dims; weight: (C, 1, k, ..., k) with odd k <= 7; bias: (C,) or None.
    stride=1 keeps the size; stride=2 gives ceil(n/2); transposed=True (stride 2; ``stride`` is then
    ignored) gives 2n-1 (no front padding: the up block pads after the whole block).
    Returns (y, s1, s2): y in x's dtype, s1 = sum(y) and s2 = sum(y*y) over the spatial dims, fp32 (N, C).

    Options (keyword-only; a backend that lacks one raises NotImplementedError):

    * ``planes=(begin, end)``: only output planes [begin, end) along the first spatial axis; y holds those
      planes and s1/s2 sum over them (a large output computed piece by piece).
    * ``out``: a tensor of y's shape that receives y instead of a new tensor (it must not overlap x).
    * ``stats_only=True``: returns (None, s1, s2) without writing the output anywhere.
    """
    check_dwconv_stats(x, weight, bias, stride, transposed, planes, out, stats_only)
    channels, k, nd = x.shape[1], weight.shape[2], x.dim() - 2
    if transposed:
        conv_t = F.conv_transpose3d if nd == 3 else F.conv_transpose2d
        y = conv_t(x, weight, bias, stride=2, padding=k // 2, groups=channels)
    else:
        conv = F.conv3d if nd == 3 else F.conv2d
        y = conv(x, weight, bias, stride=stride, padding=k // 2, groups=channels)
    if planes is not None:
        y = y[:, :, planes[0]:planes[1]]
    y32 = y.float()
    dims = tuple(range(2, y.dim()))
    s1, s2 = y32.sum(dims), (y32 * y32).sum(dims)
    if stats_only:
        return None, s1, s2
    if out is not None:
        y = out.copy_(y)
    return y, s1, s2


# -- norm_mlp -----------------------------------------------------------------------------------------------
def check_norm_mlp(y, s1, s2, gamma, beta, w_expand, b_expand, w_compress, b_compress, residual=None,
                   count=None, out=None, name: str = "norm_mlp") -> None:
    """Raise ValueError/TypeError naming the argument unless the call follows the contract below."""
    tensors = dict(y=y, s1=s1, s2=s2, gamma=gamma, beta=beta, w_expand=w_expand, b_expand=b_expand,
                   w_compress=w_compress, b_compress=b_compress, residual=residual, out=out)
    for what, t in tensors.items():
        if t is None and what in ("gamma", "beta"):
            raise ValueError(f"{name}: {what} is required (GroupNorm with affine=False: pass ones / zeros)")
        if (t is not None or what not in ("residual", "out")) and not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: {what} must be a torch.Tensor, got {type(t).__name__}")
    if y.dim() < 3:
        raise ValueError(f"{name}: y must be (N, C, *spatial), got shape {tuple(y.shape)}")
    if y.numel() == 0:
        raise ValueError(f"{name}: empty input of shape {tuple(y.shape)}")
    n, c = y.shape[:2]
    stats_dtypes = (torch.float32, torch.float64) if y.dtype == torch.float64 else (torch.float32,)  # fp64: tests
    for what, t in (("s1", s1), ("s2", s2)):
        if t.dtype not in stats_dtypes or tuple(t.shape) != (n, c):
            raise ValueError(f"{name}: {what} must be float32 of shape ({n}, {c}), got {t.dtype} {tuple(t.shape)}")
    for what, t in (("gamma", gamma), ("beta", beta)):
        if tuple(t.shape) != (c,):
            raise ValueError(f"{name}: {what} must be ({c},), got {tuple(t.shape)}")
    rc = w_expand.shape[0] if w_expand.dim() else 0
    if w_expand.dim() < 2 or w_expand.shape[1] != c or any(d != 1 for d in w_expand.shape[2:]):
        raise ValueError(f"{name}: w_expand must be (R*C, {c}[, 1, 1, 1]), got {tuple(w_expand.shape)}")
    if tuple(b_expand.shape) != (rc,):
        raise ValueError(f"{name}: b_expand must be ({rc},), got {tuple(b_expand.shape)}")
    if w_compress.dim() < 2 or w_compress.shape[1] != rc or any(d != 1 for d in w_compress.shape[2:]):
        raise ValueError(f"{name}: w_compress must be (C_out, {rc}[, 1, 1, 1]), got {tuple(w_compress.shape)}")
    co = w_compress.shape[0]
    if tuple(b_compress.shape) != (co,):
        raise ValueError(f"{name}: b_compress must be ({co},), got {tuple(b_compress.shape)}")
    want = (n, co, *y.shape[2:])
    if residual is not None and tuple(residual.shape) != want:
        raise ValueError(f"{name}: residual must be {want}, got {tuple(residual.shape)}")
    if out is not None and tuple(out.shape) != want:
        raise ValueError(f"{name}: out must be {want}, got {tuple(out.shape)}")
    if count is not None:
        try:
            too_few = operator.index(count) < y[0, 0].numel()
        except TypeError:
            too_few = True
        if too_few:
            raise ValueError(f"{name}: count must be an int >= y's voxels per channel ({y[0, 0].numel()}): the "
                             f"voxels that s1 and s2 sum over, got {count!r}")


def norm_mlp(y: torch.Tensor, s1: torch.Tensor, s2: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor,
             w_expand: torch.Tensor, b_expand: torch.Tensor, w_compress: torch.Tensor, b_compress: torch.Tensor,
             residual: torch.Tensor | None = None, eps: float = 1e-5, *, count: int | None = None,
             out: torch.Tensor | None = None):
    """GroupNorm(groups=C) from precomputed statistics, then the inverted-bottleneck MLP.

    y: (N, C, *spatial); s1, s2: fp32 (N, C) sums of y and y*y; gamma, beta: (C,);
    w_expand: (R*C, C[, 1, 1, 1]); b_expand: (R*C,); w_compress: (C_out, R*C[, 1, 1, 1]); b_compress: (C_out,);
    residual: (N, C_out, *spatial) or None. Returns (N, C_out, *spatial) in y's dtype (or autocast's).

    Options (keyword-only; a backend that lacks one raises NotImplementedError):

    * ``count``: how many voxels s1 and s2 sum over (default: y's voxels per channel). A caller that
      feeds a whole output's statistics with one chunk of it as y passes the whole output's count.
    * ``out``: a tensor of the output's shape written in place. It may be ``y`` or ``residual`` itself
      (each voxel's inputs are read before its output is written) but must not otherwise overlap them.
    """
    check_norm_mlp(y, s1, s2, gamma, beta, w_expand, b_expand, w_compress, b_compress, residual, count, out)
    count = y[0, 0].numel() if count is None else count
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
    result = conv(F.gelu(conv(z, w_e, b_expand)), w_c, b_compress)
    if residual is not None:
        result = result + residual
    if out is not None:
        return out.copy_(result)
    return result
