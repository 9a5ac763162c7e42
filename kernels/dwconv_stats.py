"""Depthwise conv3d (stride 1, stride 2, or stride-2 transposed; padding k//2) + GroupNorm statistics, Triton
forward and backward.

Contract: ``mednext_fast.ops.dwconv_stats``. Inside, activations are channels-last rows (N, D*H*W, C):
a program owns a tile of output positions x channels and loops over the taps with shifted, masked
loads (fp32 accumulation, weights as fp32 (k^3, C) so each tap is one contiguous vector).

* one conv kernel for every mode (``STRIDE``, ``TRANSPOSED`` constexprs): stride 1 keeps the size, stride 2
  gives ceil(n/2), the stride-2 transposed conv gives 2n-1. The transposed conv runs as 8 output-parity
  phases, so each output loops over only the ceil(k/2)^3 taps that reach it.
* forward: y = conv(x) + bias, stored in x's dtype, plus per-program partial sums of y and y*y (of the
  stored, rounded values) that the host reduces in a fixed order -> deterministic fp32 (N, C) s1, s2.
* backward: g = dy + ds1 + 2*y*ds2 in x's dtype (one elementwise kernel, also the bias-gradient partials);
  dw from per-program partials (programs, k^3, C) summed afterwards (no atomics), each program summing
  a[p] * b[STRIDE*p + t - P] over positions p of the smaller side (conv: a = g, b = x; transposed: a = x,
  b = g); dx = the conv kernel run over g with the transposed mapping (stride 1: flipped taps; stride 2 and
  transposed swap).

Registered as ``torch.ops.mednext_fast.dwconv_stats`` (fake + autograd) so torch.compile keeps it whole.
"""
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from mednext_fast.ops import check_dwconv_stats, out_size

from ._common import (autocast_activation, channels_last_empty, check_device, check_float, interpreting,
                      next_pow2, to_rows)

# Tests set this to force small blocks (several tiles, channel blocks and sub-blocks) in the interpreter.
BLOCK_OVERRIDE: Optional[dict] = None


# -- kernels -------------------------------------------------------------------------------------------
@triton.jit
def _tap(q, par, j, n_src, K: tl.constexpr, STRIDE: tl.constexpr, TRANSPOSED: tl.constexpr):
    # One axis, the j-th tap of output index o: (tap t, source index i, whether x[i] exists).
    #   conv:                 o = q,         t = j, i = STRIDE*o + t - P
    #   transposed, stride 1: o = q,         t = j, i = o + P - t  (flipped taps)
    #   transposed, stride 2: o = 2*q + par, only taps with 2*i + t - P == o, i.e. t = (par + P) % 2 + 2*j
    #                         (t may pass K - 1: masked), i = q + (par + P - t) / 2 (exact)
    P: tl.constexpr = K // 2
    if TRANSPOSED:
        if STRIDE == 1:
            t = j
            i = q + P - t
            ok = (i >= 0) & (i < n_src)
        else:
            t = (par + P) % 2 + 2 * j
            i = q + (par + P - t) // 2
            ok = (i >= 0) & (i < n_src) & (t < K)
    else:
        t = j
        i = STRIDE * q + t - P
        ok = (i >= 0) & (i < n_src)
    return t, i, ok


@triton.jit
def _dwconv_kernel(x_ptr, w_ptr, b_ptr, y_ptr, s1_ptr, s2_ptr,
                   C, DI, HI, WI, SI, DO, HO, WO, SO, DQ, HQ, WQ, TILES,
                   K: tl.constexpr, STRIDE: tl.constexpr, TRANSPOSED: tl.constexpr,
                   HAS_BIAS: tl.constexpr, STATS: tl.constexpr, BS: tl.constexpr, BC: tl.constexpr):
    # y[o] = sum_t w[t] x[i(o, t)], output (DO, HO, WO) from input (DI, HI, WI), see _tap. Forward: the op's
    # (STRIDE, TRANSPOSED); dgrad: the transposed mapping from g to dx.
    # The stride-2 transposed conv runs in 8 phases (output parity per axis, one per program): each output
    # only meets ceil(K/2) taps per axis, so a program loops over those instead of masking 7/8 of K^3.
    # Program = (sample, phase, tile of the phase's (DQ, HQ, WQ) grid); other modes have one phase.
    PHASED: tl.constexpr = TRANSPOSED and STRIDE == 2
    NPH: tl.constexpr = 8 if PHASED else 1
    NT: tl.constexpr = (K + 1) // 2 if PHASED else K
    F: tl.constexpr = 2 if PHASED else 1
    pid = tl.program_id(0)
    n = pid // (NPH * TILES)
    phase = (pid // TILES) % NPH
    tile = pid % TILES
    pd = phase // 4
    ph = (phase // 2) % 2
    pw = phase % 2
    offs_q = tile * BS + tl.arange(0, BS)
    offs_c = tl.program_id(1) * BC + tl.arange(0, BC)
    c_ok = offs_c < C
    qw = offs_q % WQ
    qh = (offs_q // WQ) % HQ
    qd = offs_q // (WQ * HQ)
    d_o = F * qd + pd
    h_o = F * qh + ph
    w_o = F * qw + pw
    s_ok = (offs_q < DQ * HQ * WQ) & (d_o < DO) & (h_o < HO) & (w_o < WO)
    n64 = n.to(tl.int64)
    x_base = n64 * SI * C
    acc = tl.zeros([BS, BC], dtype=tl.float32)
    # Dynamic loops over kd, kh keep k=7 compile time low; kw is unrolled.
    for jd in range(NT):
        kd, dd, ok_d = _tap(qd, pd, jd, DI, K, STRIDE, TRANSPOSED)
        ok_d = ok_d & s_ok
        for jh in range(NT):
            kh, hh, ok_h = _tap(qh, ph, jh, HI, K, STRIDE, TRANSPOSED)
            ok_dh = ok_d & ok_h
            row = (dd * HI + hh) * WI
            for jw in tl.static_range(NT):
                kw, ww, ok_w = _tap(qw, pw, jw, WI, K, STRIDE, TRANSPOSED)
                ok = ok_dh & ok_w
                src = (row + ww) * C
                xv = tl.load(x_ptr + x_base + src[:, None] + offs_c[None, :],
                             mask=ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
                w_ok = c_ok
                if PHASED:
                    w_ok = w_ok & (kd < K) & (kh < K) & (kw < K)
                wv = tl.load(w_ptr + ((kd * K + kh) * K + kw) * C + offs_c, mask=w_ok, other=0.0)
                acc += xv * wv[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_c, mask=c_ok, other=0.0)[None, :]
    mask = s_ok[:, None] & c_ok[None, :]
    out = acc.to(y_ptr.dtype.element_ty)
    offs_o = (d_o * HO + h_o) * WO + w_o
    tl.store(y_ptr + n64 * SO * C + offs_o[:, None] * C + offs_c[None, :], out, mask=mask)
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
def _wgrad_kernel(a_ptr, b_ptr, dw_ptr, C, DA, HA, WA, SA, DB, HB, WB, SB, TILES,
                  K: tl.constexpr, STRIDE: tl.constexpr, NSUB: tl.constexpr, BS: tl.constexpr, BC: tl.constexpr):
    # Partial dw[t, c] = sum_p a[p] * b[STRIDE*p + t - P] over this program's NSUB * BS positions p of a.
    # conv (stride 1 or 2): a = g, b = x. Transposed conv: a = x, b = g.
    pid = tl.program_id(0)
    n = pid // TILES
    tile = pid % TILES
    offs_c = tl.program_id(1) * BC + tl.arange(0, BC)
    c_ok = offs_c < C
    n64 = n.to(tl.int64)
    a_base = n64 * SA * C
    b_base = n64 * SB * C
    P: tl.constexpr = K // 2
    KKK: tl.constexpr = K * K * K
    for t in range(KKK):
        kd = t // (K * K)
        kh = (t // K) % K
        kw = t % K
        acc = tl.zeros([BS, BC], dtype=tl.float32)
        for sub in range(NSUB):
            offs_s = (tile * NSUB + sub) * BS + tl.arange(0, BS)
            s_ok = offs_s < SA
            dd = STRIDE * (offs_s // (WA * HA)) + kd - P
            hh = STRIDE * ((offs_s // WA) % HA) + kh - P
            ww = STRIDE * (offs_s % WA) + kw - P
            ok = s_ok & (dd >= 0) & (dd < DB) & (hh >= 0) & (hh < HB) & (ww >= 0) & (ww < WB)
            av = tl.load(a_ptr + a_base + offs_s[:, None] * C + offs_c[None, :],
                         mask=s_ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
            bv = tl.load(b_ptr + b_base + ((dd * HB + hh) * WB + ww)[:, None] * C + offs_c[None, :],
                         mask=ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
            acc += av * bv
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


def _numel(dims) -> int:
    d, h, w = dims
    return d * h * w


def _weight_taps(weight: torch.Tensor) -> torch.Tensor:
    c = weight.shape[0]
    return weight.detach().reshape(c, -1).t().contiguous().float()  # (k^3, C)


def _conv_rows(src, src_dims, w_taps, bias, out, out_dims, n, c, k, stride, transposed, stats, cfg):
    # src: (N, prod(src_dims), C) rows; out: an NDHWC view over prod(out_dims) positions.
    phased = transposed and stride == 2  # 8 output-parity phases, each a (ceil(n/2),)*3 grid
    phases = 8 if phased else 1
    q_dims = tuple((v + 1) // 2 for v in out_dims) if phased else out_dims
    tiles = triton.cdiv(_numel(q_dims), cfg["BS"])
    programs = n * phases * tiles
    s1p = s2p = None
    if stats:
        s1p = torch.empty((programs, c), device=src.device, dtype=torch.float32)
        s2p = torch.empty_like(s1p)
    dummy = w_taps
    _dwconv_kernel[(programs, triton.cdiv(c, cfg["BC"]))](
        src, w_taps, bias if bias is not None else dummy, out, s1p if stats else dummy, s2p if stats else dummy,
        c, *src_dims, _numel(src_dims), *out_dims, _numel(out_dims), *q_dims, tiles,
        K=k, STRIDE=stride, TRANSPOSED=transposed, HAS_BIAS=bias is not None, STATS=stats,
        BS=cfg["BS"], BC=cfg["BC"], num_warps=cfg["warps"])
    if stats:  # per-sample partials, summed in a fixed order
        return s1p.view(n, -1, c).sum(1), s2p.view(n, -1, c).sum(1)
    return None


def _forward(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: int, transposed: bool):
    n, c = x.shape[:2]
    in_dims = tuple(x.shape[2:])
    out_dims = tuple(out_size(v, stride, transposed) for v in in_dims)
    k = weight.shape[-1]
    cfg = _blocks(n, c, max(_numel(in_dims), _numel(out_dims)), interpreting(x))
    y = channels_last_empty(n, c, out_dims, x.dtype, x.device)
    b = bias.detach().float().contiguous() if bias is not None else None
    s1, s2 = _conv_rows(to_rows(x), in_dims, _weight_taps(weight), b, y.permute(0, 2, 3, 4, 1), out_dims,
                        n, c, k, stride, transposed, True, cfg)
    return y, s1, s2


def _backward(gy, gs1, gs2, x, weight, y, stride: int, transposed: bool):
    n, c = x.shape[:2]
    in_dims, out_dims = tuple(x.shape[2:]), tuple(y.shape[2:])
    s_in, s_out = _numel(in_dims), _numel(out_dims)
    k = weight.shape[-1]
    cfg = _blocks(n, c, max(s_in, s_out), interpreting(x))
    bs, bc = cfg["BS"], cfg["BC"]
    gy_rows, y_rows, x_rows = to_rows(gy), to_rows(y), to_rows(x)
    tiles = triton.cdiv(s_out, bs)
    cblocks = triton.cdiv(c, bc)
    # g in x's dtype: the reference's autograd also rounds this gradient to it; halves dgrad/wgrad reads.
    g = torch.empty((n, s_out, c), device=x.device, dtype=x.dtype)
    dbp = torch.empty((n * tiles, c), device=x.device, dtype=torch.float32)
    _grad_total_kernel[(n * tiles, cblocks)](gy_rows, y_rows, gs1.float().contiguous(), gs2.float().contiguous(),
                                             g, dbp, c, s_out, tiles, BS=bs, BC=bc, num_warps=cfg["warps"])
    # wgrad sums over the positions of the smaller side, reading the other at STRIDE*p + t - P.
    if transposed:
        a, a_dims, b_, b_dims = x_rows, in_dims, g, out_dims
    else:
        a, a_dims, b_, b_dims = g, out_dims, x_rows, in_dims
    s_a = _numel(a_dims)
    nsub = _blocks(n, c, s_a, interpreting(x))["NSUB"]  # ~1024 programs over the summed side
    wtiles = triton.cdiv(s_a, bs * nsub)
    dwp = torch.empty((n * wtiles, k ** 3, c), device=x.device, dtype=torch.float32)
    _wgrad_kernel[(n * wtiles, cblocks)](a, b_, dwp, c, *a_dims, s_a, *b_dims, _numel(b_dims), wtiles,
                                         K=k, STRIDE=2 if transposed else stride, NSUB=nsub, BS=bs, BC=bc,
                                         num_warps=cfg["warps"])
    dw = dwp.sum(0).t().reshape(weight.shape)  # fp32; the autograd wrapper casts
    # dx: the transposed op over g (stride 1: flipped taps; stride 2 <-> transposed stride 2).
    dx = channels_last_empty(n, c, in_dims, x.dtype, x.device)
    _conv_rows(g, out_dims, _weight_taps(weight), None, dx.permute(0, 2, 3, 4, 1), in_dims, n, c, k,
               2 if transposed else stride, not transposed, False, cfg)
    return dx, dw, dbp.sum(0)


# -- torch.library registration -------------------------------------------------------------------------
@torch.library.custom_op("mednext_fast::dwconv_stats", mutates_args=())
def _dwconv_stats_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                     stride: int = 1, transposed: bool = False) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _forward(x, weight, bias, stride, transposed)


@_dwconv_stats_op.register_fake
def _(x, weight, bias, stride=1, transposed=False):
    n, c = x.shape[:2]
    out_dims = tuple(out_size(v, stride, transposed) for v in x.shape[2:])
    y = channels_last_empty(n, c, out_dims, x.dtype, x.device)
    return y, x.new_empty((n, c), dtype=torch.float32), x.new_empty((n, c), dtype=torch.float32)


@torch.library.custom_op("mednext_fast::dwconv_stats_backward", mutates_args=())
def _dwconv_stats_backward_op(gy: torch.Tensor, gs1: torch.Tensor, gs2: torch.Tensor, x: torch.Tensor,
                              weight: torch.Tensor, y: torch.Tensor, stride: int, transposed: bool,
                              ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward(gy, gs1, gs2, x, weight, y, stride, transposed)


@_dwconv_stats_backward_op.register_fake
def _(gy, gs1, gs2, x, weight, y, stride, transposed):
    n, c = x.shape[:2]
    dx = channels_last_empty(n, c, tuple(x.shape[2:]), x.dtype, x.device)
    return dx, weight.new_empty(weight.shape, dtype=torch.float32), weight.new_empty((c,), dtype=torch.float32)


def _setup_context(ctx, inputs, output):
    x, weight, bias, stride, transposed = inputs
    ctx.has_bias = bias is not None
    ctx.bias_dtype = bias.dtype if bias is not None else None
    ctx.stride, ctx.transposed = stride, transposed
    ctx.save_for_backward(x, weight, output[0])  # y is shared with norm_mlp's saved tensors


def _backward_autograd(ctx, gy, gs1, gs2):
    x, weight, y = ctx.saved_tensors
    n, c = x.shape[:2]
    if gy is None:
        gy = torch.zeros_like(y)
    gs1 = torch.zeros((n, c), device=x.device, dtype=torch.float32) if gs1 is None else gs1
    gs2 = torch.zeros((n, c), device=x.device, dtype=torch.float32) if gs2 is None else gs2
    dx, dw, db = _dwconv_stats_backward_op(gy, gs1, gs2, x, weight, y, ctx.stride, ctx.transposed)
    return dx, dw.to(weight.dtype), (db.to(ctx.bias_dtype) if ctx.has_bias else None), None, None


_dwconv_stats_op.register_autograd(_backward_autograd, setup_context=_setup_context)


# -- public function -----------------------------------------------------------------------------------
def _check(x, weight, bias, stride, transposed):
    name = "dwconv_stats"
    if x.dim() != 5:
        raise NotImplementedError(f"{name}: the Triton kernel is 3-D only, expected (N, C, D, H, W), "
                                  f"got shape {tuple(x.shape)}")
    check_dwconv_stats(x, weight, bias, stride, transposed, name=name)
    check_float(name, "x", x)
    check_float(name, "weight", weight)
    if bias is not None:
        check_float(name, "bias", bias)
    largest = max(x[0].numel(), x.shape[1] * _numel(tuple(out_size(v, stride, transposed) for v in x.shape[2:])))
    if largest >= 2 ** 31:
        raise ValueError(f"{name}: one sample has {largest} elements (input or output); the kernels index a "
                         "sample with 32-bit offsets (< 2**31)")
    check_device(name, x, weight, bias)


def dwconv_stats(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                 stride: int = 1, transposed: bool = False, *, planes=None, out=None, stats_only: bool = False):
    """Triton ``mednext_fast.ops.dwconv_stats``: returns (y, s1, s2).

    stride=1 keeps the size, stride=2 gives ceil(n/2) per axis, transposed=True is the stride-2 transposed
    conv (2n-1 per axis; ``stride`` is then ignored, as in the reference). Padding k//2 throughout.
    y has x's dtype (the autocast dtype under autocast) and is stored channels-last; s1, s2 are fp32 (N, C).
    Accepts NCDHW or channels_last_3d x (channels_last_3d avoids one copy). Differentiable.
    The options ``planes``, ``out`` and ``stats_only`` are not supported: autograd needs whole, fresh outputs.
    """
    for option, value in (("planes", planes), ("out", out), ("stats_only", stats_only or None)):
        if value is not None:
            raise NotImplementedError(f"dwconv_stats: the Triton backend takes no {option}= (autograd saves "
                                      "whole, fresh outputs); call it without")
    transposed = bool(transposed)
    stride = 2 if transposed else int(stride)
    x = autocast_activation(x)
    _check(x, weight, bias, stride, transposed)
    return _dwconv_stats_op(x, weight, bias, stride, transposed)


__all__ = ["dwconv_stats"]
