"""Depthwise conv3d (stride 1, padding k//2) + GroupNorm statistics, Triton forward and backward.

Contract: ``mednext_fast.ops.dwconv_stats``. Inside, activations are channels-last rows (N, D*H*W, C):
a program owns a tile of spatial positions x channels and loops over the k^3 taps with shifted, masked
loads (fp32 accumulation, weights as fp32 (k^3, C) so each tap is one contiguous vector).

* forward: y = conv(x) + bias, stored in x's dtype, plus per-tile partial sums of y and y*y (of the
  stored, rounded values) that the host reduces in a fixed order -> deterministic fp32 (N, C) s1, s2.
* backward: g = dy + ds1 + 2*y*ds2 in x's dtype (one elementwise kernel, also the bias-gradient partials);
  dw from per-program partials (N*tiles, k^3, C) summed afterwards (no atomics);
  dx = the forward kernel run over g with flipped taps.

Registered as ``torch.ops.mednext_fast.dwconv_stats`` (fake + autograd) so torch.compile keeps it whole.
"""
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from ._common import (autocast_activation, channels_last_empty, check_device, check_float, interpreting,
                      next_pow2, to_rows)

MAX_K = 7
# Tests set this to force small blocks (several tiles, channel blocks and sub-blocks) in the interpreter.
BLOCK_OVERRIDE: Optional[dict] = None


# -- kernels -------------------------------------------------------------------------------------------
@triton.jit
def _dwconv_kernel(x_ptr, w_ptr, b_ptr, y_ptr, s1_ptr, s2_ptr,
                   C, D, H, W, S, TILES,
                   K: tl.constexpr, SIGN: tl.constexpr, HAS_BIAS: tl.constexpr, STATS: tl.constexpr,
                   BS: tl.constexpr, BC: tl.constexpr):
    # SIGN=+1: y[p] = sum_t w[t] x[p + t - P] (forward); SIGN=-1: dx[q] = sum_t w[t] g[q - t + P] (dgrad).
    pid = tl.program_id(0)
    n = pid // TILES
    tile = pid % TILES
    offs_s = tile * BS + tl.arange(0, BS)
    offs_c = tl.program_id(1) * BC + tl.arange(0, BC)
    s_ok = offs_s < S
    c_ok = offs_c < C
    w_i = offs_s % W
    h_i = (offs_s // W) % H
    d_i = offs_s // (W * H)
    base = n.to(tl.int64) * S * C
    P: tl.constexpr = K // 2
    acc = tl.zeros([BS, BC], dtype=tl.float32)
    # Dynamic loops over kd, kh keep k=7 compile time low; kw is unrolled.
    for kd in range(K):
        dd = d_i + SIGN * (kd - P)
        ok_d = s_ok & (dd >= 0) & (dd < D)
        for kh in range(K):
            hh = h_i + SIGN * (kh - P)
            ok_dh = ok_d & (hh >= 0) & (hh < H)
            row = (dd * H + hh) * W
            for kw in tl.static_range(K):
                ww = w_i + SIGN * (kw - P)
                ok = ok_dh & (ww >= 0) & (ww < W)
                src = (row + ww) * C
                xv = tl.load(x_ptr + base + src[:, None] + offs_c[None, :],
                             mask=ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
                wv = tl.load(w_ptr + ((kd * K + kh) * K + kw) * C + offs_c, mask=c_ok, other=0.0)
                acc += xv * wv[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_c, mask=c_ok, other=0.0)[None, :]
    mask = s_ok[:, None] & c_ok[None, :]
    out = acc.to(y_ptr.dtype.element_ty)
    tl.store(y_ptr + base + offs_s[:, None] * C + offs_c[None, :], out, mask=mask)
    if STATS:
        # Statistics of the values actually stored, as the reference computes them from y.float().
        yr = tl.where(mask, out.to(tl.float32), 0.0)
        tl.store(s1_ptr + pid * C + offs_c, tl.sum(yr, axis=0), mask=c_ok)
        tl.store(s2_ptr + pid * C + offs_c, tl.sum(yr * yr, axis=0), mask=c_ok)


@triton.jit
def _grad_total_kernel(gy_ptr, y_ptr, a_ptr, b_ptr, g_ptr, db_ptr, C, S, TILES,
                       BS: tl.constexpr, BC: tl.constexpr):
    # g = dy + ds1[n, c] + 2 * y * ds2[n, c]: the full gradient reaching the conv output.
    pid = tl.program_id(0)
    n = pid // TILES
    offs_s = (pid % TILES) * BS + tl.arange(0, BS)
    offs_c = tl.program_id(1) * BC + tl.arange(0, BC)
    c_ok = offs_c < C
    mask = (offs_s < S)[:, None] & c_ok[None, :]
    idx = n.to(tl.int64) * S * C + offs_s[:, None] * C + offs_c[None, :]
    gy = tl.load(gy_ptr + idx, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + idx, mask=mask, other=0.0).to(tl.float32)
    a = tl.load(a_ptr + n * C + offs_c, mask=c_ok, other=0.0)
    b = tl.load(b_ptr + n * C + offs_c, mask=c_ok, other=0.0)
    g = tl.where(mask, gy + a[None, :] + 2.0 * y * b[None, :], 0.0)
    tl.store(g_ptr + idx, g.to(g_ptr.dtype.element_ty), mask=mask)
    tl.store(db_ptr + pid * C + offs_c, tl.sum(g, axis=0), mask=c_ok)


@triton.jit
def _wgrad_kernel(x_ptr, g_ptr, dw_ptr, C, D, H, W, S, TILES,
                  K: tl.constexpr, NSUB: tl.constexpr, BS: tl.constexpr, BC: tl.constexpr):
    # Partial dw[t, c] = sum_p g[p] * x[p + t - P] over this program's NSUB * BS positions.
    pid = tl.program_id(0)
    n = pid // TILES
    tile = pid % TILES
    offs_c = tl.program_id(1) * BC + tl.arange(0, BC)
    c_ok = offs_c < C
    base = n.to(tl.int64) * S * C
    P: tl.constexpr = K // 2
    KKK: tl.constexpr = K * K * K
    for t in range(KKK):
        kd = t // (K * K)
        kh = (t // K) % K
        kw = t % K
        acc = tl.zeros([BS, BC], dtype=tl.float32)
        for sub in range(NSUB):
            offs_s = (tile * NSUB + sub) * BS + tl.arange(0, BS)
            s_ok = offs_s < S
            w_i = offs_s % W
            h_i = (offs_s // W) % H
            d_i = offs_s // (W * H)
            dd = d_i + kd - P
            hh = h_i + kh - P
            ww = w_i + kw - P
            ok = s_ok & (dd >= 0) & (dd < D) & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
            g = tl.load(g_ptr + base + offs_s[:, None] * C + offs_c[None, :],
                        mask=s_ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
            xv = tl.load(x_ptr + base + ((dd * H + hh) * W + ww)[:, None] * C + offs_c[None, :],
                         mask=ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
            acc += g * xv
        tl.store(dw_ptr + (pid * KKK + t) * C + offs_c, tl.sum(acc, axis=0), mask=c_ok)


# -- launchers -----------------------------------------------------------------------------------------
def _blocks(n: int, c: int, s: int, interp: bool) -> dict:
    if BLOCK_OVERRIDE is not None:
        return dict(BLOCK_OVERRIDE)
    if interp:
        # The interpreter pays per load, not per element: as few, as large programs as possible.
        return dict(BS=min(next_pow2(s), 4096), BC=min(next_pow2(c), 64), NSUB=1, warps=4)
    bc = min(next_pow2(c), 32)
    bs = 128
    tiles = triton.cdiv(s, bs)
    # wgrad: ~1024 programs, each summing NSUB sub-blocks, keeps the partial buffer small.
    cblocks = triton.cdiv(c, bc)
    nsub = max(1, min(64, (n * tiles * cblocks) // 1024))
    return dict(BS=bs, BC=bc, NSUB=nsub, warps=4)


def _weight_taps(weight: torch.Tensor) -> torch.Tensor:
    c = weight.shape[0]
    return weight.detach().reshape(c, -1).t().contiguous().float()  # (k^3, C)


def _conv_rows(src, w_taps, bias, out, n, c, dims, k, sign, stats, cfg):
    d, h, w = dims
    s = d * h * w
    tiles = triton.cdiv(s, cfg["BS"])
    grid = (n * tiles, triton.cdiv(c, cfg["BC"]))
    s1p = s2p = None
    if stats:
        s1p = torch.empty((n * tiles, c), device=src.device, dtype=torch.float32)
        s2p = torch.empty_like(s1p)
    dummy = w_taps
    _dwconv_kernel[grid](src, w_taps, bias if bias is not None else dummy, out,
                         s1p if stats else dummy, s2p if stats else dummy,
                         c, d, h, w, s, tiles, K=k, SIGN=sign, HAS_BIAS=bias is not None, STATS=stats,
                         BS=cfg["BS"], BC=cfg["BC"], num_warps=cfg["warps"])
    if stats:
        return s1p.view(n, tiles, c).sum(1), s2p.view(n, tiles, c).sum(1)
    return None


def _forward(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]):
    n, c, d, h, w = x.shape
    k = weight.shape[-1]
    cfg = _blocks(n, c, d * h * w, interpreting(x))
    x_rows = to_rows(x)
    y = channels_last_empty(n, c, (d, h, w), x.dtype, x.device)
    y_rows = y.permute(0, 2, 3, 4, 1)  # contiguous NDHWC view of y's storage
    b = bias.detach().float().contiguous() if bias is not None else None
    s1, s2 = _conv_rows(x_rows, _weight_taps(weight), b, y_rows, n, c, (d, h, w), k, 1, True, cfg)
    return y, s1, s2


def _backward(gy, gs1, gs2, x, weight, y):
    n, c, d, h, w = x.shape
    k = weight.shape[-1]
    s = d * h * w
    cfg = _blocks(n, c, s, interpreting(x))
    bs, bc, nsub = cfg["BS"], cfg["BC"], cfg["NSUB"]
    gy_rows, y_rows, x_rows = to_rows(gy), to_rows(y), to_rows(x)
    tiles = triton.cdiv(s, bs)
    cblocks = triton.cdiv(c, bc)
    # g in x's dtype: the reference's autograd also rounds this gradient to it; halves dgrad/wgrad reads.
    g = torch.empty((n, s, c), device=x.device, dtype=x.dtype)
    dbp = torch.empty((n * tiles, c), device=x.device, dtype=torch.float32)
    _grad_total_kernel[(n * tiles, cblocks)](gy_rows, y_rows, gs1.float().contiguous(), gs2.float().contiguous(),
                                             g, dbp, c, s, tiles, BS=bs, BC=bc, num_warps=cfg["warps"])
    wtiles = triton.cdiv(s, bs * nsub)
    dwp = torch.empty((n * wtiles, k ** 3, c), device=x.device, dtype=torch.float32)
    _wgrad_kernel[(n * wtiles, cblocks)](x_rows, g, dwp, c, d, h, w, s, wtiles, K=k, NSUB=nsub, BS=bs, BC=bc,
                                         num_warps=cfg["warps"])
    dw = dwp.sum(0).t().reshape(weight.shape)  # fp32; the autograd wrapper casts
    dx = channels_last_empty(n, c, (d, h, w), x.dtype, x.device)
    _conv_rows(g, _weight_taps(weight), None, dx.permute(0, 2, 3, 4, 1), n, c, (d, h, w), k, -1, False, cfg)
    return dx, dw, dbp.sum(0)


# -- torch.library registration -------------------------------------------------------------------------
@torch.library.custom_op("mednext_fast::dwconv_stats", mutates_args=())
def _dwconv_stats_op(x: torch.Tensor, weight: torch.Tensor,
                     bias: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _forward(x, weight, bias)


@_dwconv_stats_op.register_fake
def _(x, weight, bias):
    n, c = x.shape[:2]
    y = channels_last_empty(n, c, tuple(x.shape[2:]), x.dtype, x.device)
    return y, x.new_empty((n, c), dtype=torch.float32), x.new_empty((n, c), dtype=torch.float32)


@torch.library.custom_op("mednext_fast::dwconv_stats_backward", mutates_args=())
def _dwconv_stats_backward_op(gy: torch.Tensor, gs1: torch.Tensor, gs2: torch.Tensor, x: torch.Tensor,
                              weight: torch.Tensor, y: torch.Tensor,
                              ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward(gy, gs1, gs2, x, weight, y)


@_dwconv_stats_backward_op.register_fake
def _(gy, gs1, gs2, x, weight, y):
    n, c = x.shape[:2]
    dx = channels_last_empty(n, c, tuple(x.shape[2:]), x.dtype, x.device)
    return dx, weight.new_empty(weight.shape, dtype=torch.float32), weight.new_empty((c,), dtype=torch.float32)


def _setup_context(ctx, inputs, output):
    x, weight, bias = inputs
    ctx.has_bias = bias is not None
    ctx.bias_dtype = bias.dtype if bias is not None else None
    ctx.save_for_backward(x, weight, output[0])  # y is shared with norm_mlp's saved tensors


def _backward_autograd(ctx, gy, gs1, gs2):
    x, weight, y = ctx.saved_tensors
    n, c = x.shape[:2]
    if gy is None:
        gy = torch.zeros_like(y)
    gs1 = torch.zeros((n, c), device=x.device, dtype=torch.float32) if gs1 is None else gs1
    gs2 = torch.zeros((n, c), device=x.device, dtype=torch.float32) if gs2 is None else gs2
    dx, dw, db = _dwconv_stats_backward_op(gy, gs1, gs2, x, weight, y)
    return dx, dw.to(weight.dtype), (db.to(ctx.bias_dtype) if ctx.has_bias else None)


_dwconv_stats_op.register_autograd(_backward_autograd, setup_context=_setup_context)


# -- public function -----------------------------------------------------------------------------------
def _check(x, weight, bias):
    name = "dwconv_stats"
    if x.dim() != 5:
        raise NotImplementedError(f"{name}: the Triton kernel is 3-D only, expected (N, C, D, H, W), "
                                  f"got shape {tuple(x.shape)}")
    check_float(name, "x", x)
    check_float(name, "weight", weight)
    c = x.shape[1]
    if weight.dim() != 5 or weight.shape[0] != c or weight.shape[1] != 1 or len(set(weight.shape[2:])) != 1:
        raise ValueError(f"{name}: weight must be ({c}, 1, k, k, k) for a depthwise conv over {c} channels, "
                         f"got {tuple(weight.shape)}")
    k = weight.shape[2]
    if k % 2 == 0 or k > MAX_K:
        raise ValueError(f"{name}: kernel size must be odd and <= {MAX_K}, got {k}")
    if bias is not None:
        check_float(name, "bias", bias)
        if tuple(bias.shape) != (c,):
            raise ValueError(f"{name}: bias must be ({c},), got {tuple(bias.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{name}: empty input of shape {tuple(x.shape)}")
    if x[0].numel() >= 2 ** 31:
        raise ValueError(f"{name}: one sample has {x[0].numel()} elements; the kernels index a sample with "
                         "32-bit offsets (< 2**31)")
    check_device(name, x, weight, bias)


def dwconv_stats(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                 stride: int = 1, transposed: bool = False):
    """Triton ``mednext_fast.ops.dwconv_stats`` (stride 1): returns (y, s1, s2).

    y has x's dtype (the autocast dtype under autocast) and is stored channels-last; s1, s2 are fp32 (N, C).
    Accepts NCDHW or channels_last_3d x (channels_last_3d avoids one copy). Differentiable.
    """
    if transposed or stride != 1:
        raise NotImplementedError("dwconv_stats: stride-2 and transposed depthwise convs come with the "
                                  "resampling-block issue; the Triton kernel covers stride 1")
    x = autocast_activation(x)
    _check(x, weight, bias)
    return _dwconv_stats_op(x, weight, bias)


__all__ = ["dwconv_stats"]
