"""Depthwise conv3d (stride 1, stride 2, or stride-2 transposed; padding k//2) + GroupNorm statistics, Triton
forward and backward.

Contract: ``mednext_fast.ops.dwconv_stats``. Inside, activations are channels-last rows (N, D*H*W, C).

* one conv kernel for every mode (``STRIDE``, ``TRANSPOSED`` constexprs): stride 1 keeps the size, stride 2
  gives ceil(n/2), the stride-2 transposed conv gives 2n-1. The transposed conv runs as 8 output-parity
  phases, so each output loops over only the ceil(k/2)^3 taps that reach it. A program owns a (d, h, w) box
  of outputs x a block of channels and loops over the taps with shifted, masked loads (fp32 accumulation,
  weights as fp32 (k^3, C) so each tap is one contiguous vector).
* forward: y = conv(x) + bias, stored in x's dtype, plus per-program partial sums of y and y*y (of the
  stored, rounded values) that the host reduces in a fixed order -> deterministic fp32 (N, C) s1, s2.
* backward: g = dy + ds1 + 2*y*ds2 in x's dtype (one elementwise kernel, also the bias-gradient partials);
  dw by rows of taps (``_wgrad_kernel``: each program one (kd, kh) pair, its k kw-taps accumulated together
  from one load of each operand, partials summed afterwards, no atomics); dx = the conv kernel run over g
  with the transposed mapping (stride 1: flipped taps; stride 2 and transposed swap).
* launch configurations (box shape, channels, warps; wgrad's sub-block and split) come from
  ``tuning.choose``: a committed per-GPU table, tuning on demand, or the defaults below.

Registered as ``torch.ops.mednext_fast.dwconv_stats`` (fake + autograd) so torch.compile keeps it whole.
"""
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from mednext_fast.ops import check_dwconv_stats, out_size

from . import tuning
from ._common import (autocast_activation, channels_last_empty, check_device, check_float, interpreting,
                      next_pow2, to_rows)
from .tuning import ConvConfig, WgradConfig

# -- kernels -------------------------------------------------------------------------------------------
# Masks are built from block comparisons only: newer Triton interpreters reject `block & scalar` masks, so
# a scalar condition is folded into a bound instead. Every accumulation is an explicit tl.fma: the result
# and the FP32 rate must not depend on whether Triton's FP fusion is on.
@triton.jit
def _tap(q, par, j, n_src, K: tl.constexpr, STRIDE: tl.constexpr, TRANSPOSED: tl.constexpr):
    # One axis, the j-th tap of output index o: (weight tap t, source index i, whether x[i] exists).
    #   conv:                 o = q,         t = j, i = STRIDE*o + t - P
    #   transposed, stride 1: o = q,         t = j, i = o + P - t  (flipped taps)
    #   transposed, stride 2: o = 2*q + par, only taps with 2*i + t - P == o, i.e. t = (par + P) % 2 + 2*j,
    #                         i = q + (par + P - t) / 2 (exact); t may pass K - 1 on one parity: no source
    #                         then (the bound becomes 0) and the weight index is clamped to stay in range.
    P: tl.constexpr = K // 2
    if TRANSPOSED:
        if STRIDE == 1:
            t = j
            i = q + P - t
        else:
            t = (par + P) % 2 + 2 * j
            i = q + (par + P - t) // 2
            n_src = tl.where(t < K, n_src, 0)
            t = tl.minimum(t, K - 1)
    else:
        t = j
        i = STRIDE * q + t - P
    return t, i, (i >= 0) & (i < n_src)


@triton.jit
def _dwconv_kernel(x_ptr, w_ptr, b_ptr, y_ptr, s1_ptr, s2_ptr,
                   C, DI, HI, WI, SI, DO, HO, WO, SO, DQ, HQ, WQ, TILES_H, TILES_W, TILES,
                   K: tl.constexpr, STRIDE: tl.constexpr, TRANSPOSED: tl.constexpr,
                   HAS_BIAS: tl.constexpr, STATS: tl.constexpr,
                   TD: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr, BC: tl.constexpr):
    # y[o] = sum_t w[t] x[i(o, t)], output (DO, HO, WO) from input (DI, HI, WI), see _tap. Forward: the op's
    # (STRIDE, TRANSPOSED); dgrad: the transposed mapping from g to dx.
    # A program owns a (TD, TH, TW) box of output voxels x BC channels: a box, not a run of consecutive
    # voxels, so neighbouring outputs share most of their input rows (kh and kd reuse through L1), and
    # every index is a power-of-two split of the lane number (no runtime divisions per element).
    # The stride-2 transposed conv runs in 8 phases (output parity per axis, one per program): each output
    # only meets ceil(K/2) taps per axis, so a program loops over those instead of masking 7/8 of K^3.
    # Program = (sample, phase, box of the phase's (DQ, HQ, WQ) grid); other modes have one phase.
    PHASED: tl.constexpr = TRANSPOSED and STRIDE == 2
    NPH: tl.constexpr = 8 if PHASED else 1
    NT: tl.constexpr = (K + 1) // 2 if PHASED else K
    F: tl.constexpr = 2 if PHASED else 1
    BS: tl.constexpr = TD * TH * TW
    pid = tl.program_id(0)
    n = pid // (NPH * TILES)
    phase = (pid // TILES) % NPH
    tile = pid % TILES
    pd = phase // 4
    ph = (phase // 2) % 2
    pw = phase % 2
    lane = tl.arange(0, BS)
    qw = (tile % TILES_W) * TW + lane % TW
    qh = ((tile // TILES_W) % TILES_H) * TH + (lane // TW) % TH
    qd = (tile // (TILES_W * TILES_H)) * TD + lane // (TW * TH)
    offs_c = tl.program_id(1) * BC + tl.arange(0, BC)
    c_ok = offs_c < C
    d_o = F * qd + pd
    h_o = F * qh + ph
    w_o = F * qw + pw
    s_ok = (qd < DQ) & (qh < HQ) & (qw < WQ) & (d_o < DO) & (h_o < HO) & (w_o < WO)
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
                wv = tl.load(w_ptr + ((kd * K + kh) * K + kw) * C + offs_c, mask=c_ok, other=0.0)
                acc = tl.fma(xv, wv[None, :], acc)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_c, mask=c_ok, other=0.0)[None, :]
    mask = s_ok[:, None] & c_ok[None, :]
    out = acc.to(y_ptr.dtype.element_ty)
    offs_o = (d_o * HO + h_o) * WO + w_o
    tl.store(y_ptr + n64 * SO * C + offs_o[:, None] * C + offs_c[None, :], out, mask=mask)
    if STATS:
        # Statistics of the values actually stored, as the reference computes them from y.float().
        yr = tl.where(mask, out.to(tl.float32), 0.0)
        part = pid.to(tl.int64) * C + offs_c  # (programs, C) grows with the batch: 64-bit offsets
        tl.store(s1_ptr + part, tl.sum(yr, axis=0), mask=c_ok)
        tl.store(s2_ptr + part, tl.sum(yr * yr, axis=0), mask=c_ok)


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
    g = tl.where(mask, tl.fma(2.0 * y, b[None, :], gy + a[None, :]), 0.0)
    tl.store(g_ptr + idx, g.to(g_ptr.dtype.element_ty), mask=mask)
    tl.store(db_ptr + pid.to(tl.int64) * C + offs_c, tl.sum(g, axis=0), mask=c_ok)


@triton.jit
def _wgrad_kernel(a_ptr, b_ptr, dw_ptr, C, DA, HA, WA, SA, DB, HB, WB, SB, CHUNKS, NSUB,
                  K: tl.constexpr, KP: tl.constexpr, STRIDE: tl.constexpr, BS: tl.constexpr, BC: tl.constexpr):
    # Partial dw[t, c] = sum_p a[p] * b[STRIDE*p + t - P] over one chunk of NSUB * BS positions p of a, for
    # the K taps of one (kd, kh) row: conv (stride 1 or 2): a = g, b = x; transposed conv: a = x, b = g.
    # By rows, not taps: a sub-block of a is loaded once and multiplied with the K kw-shifted rows of b,
    # loaded together as one [KP, BS, BC] block (KP = K rounded up to a power of two, masked); K
    # accumulators stay in registers and are reduced over positions once, at the end. The (kd, kh) pair
    # varies fastest across programs, so the K*K programs reading the same rows of a and b run together
    # and share them through L2: HBM traffic is about |a| + |b| instead of K^3 (|a| + |b|).
    # Partials (n * CHUNKS, K^3, C) are summed afterwards in a fixed order: deterministic, no atomics.
    KK: tl.constexpr = K * K
    P: tl.constexpr = K // 2
    pid = tl.program_id(0)
    pair = pid % KK
    nc = pid // KK
    n = nc // CHUNKS
    chunk = nc % CHUNKS
    kd = pair // K
    kh = pair % K
    offs_c = tl.program_id(1) * BC + tl.arange(0, BC)
    c_ok = offs_c < C
    kw = tl.arange(0, KP)
    kw_ok = kw < K
    n64 = n.to(tl.int64)
    a_base = n64 * SA * C
    b_base = n64 * SB * C
    acc = tl.zeros([KP, BS, BC], dtype=tl.float32)
    for sub in range(NSUB):
        offs_s = (chunk * NSUB + sub) * BS + tl.arange(0, BS)
        s_ok = offs_s < SA
        dd = STRIDE * (offs_s // (WA * HA)) + kd - P
        hh = STRIDE * ((offs_s // WA) % HA) + kh - P
        row_ok = s_ok & (dd >= 0) & (dd < DB) & (hh >= 0) & (hh < HB)
        ww = STRIDE * (offs_s % WA)[None, :] + kw[:, None] - P  # [KP, BS]
        ok = row_ok[None, :] & (ww >= 0) & (ww < WB) & kw_ok[:, None]
        av = tl.load(a_ptr + a_base + offs_s[:, None] * C + offs_c[None, :],
                     mask=s_ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
        src = ((dd * HB + hh) * WB)[None, :] + ww  # [KP, BS]
        bv = tl.load(b_ptr + b_base + src[:, :, None] * C + offs_c[None, None, :],
                     mask=ok[:, :, None] & c_ok[None, None, :], other=0.0).to(tl.float32)
        acc = tl.fma(av[None, :, :], bv, acc)
    part = tl.sum(acc, axis=1)  # [KP, BC]
    t = (nc.to(tl.int64) * KK + pair) * K + kw  # row of the (n * CHUNKS * K^3, C) partial buffer
    tl.store(dw_ptr + t[:, None] * C + offs_c[None, :], part, mask=kw_ok[:, None] & c_ok[None, :])


# -- launch configurations -----------------------------------------------------------------------------
# Tests set this to force small blocks for the grad-total kernel; conv and wgrad configurations are
# pinned through tuning.FORCED (each one of the spaces below is exercised that way).
BLOCK_OVERRIDE: Optional[dict] = None

# Candidates the tuner times (python -m mednext_fast.kernels.tune; MEDNEXT_FAST_AUTOTUNE=1); `python -m
# tests.kernels.sm90_compile --all` compiles every one of them for sm_90 and reports its registers and spills.
CONV_SPACE = (ConvConfig(128, 128, 32, 4), ConvConfig(64, 16, 32, 4), ConvConfig(64, 8, 32, 4),
              ConvConfig(64, 64, 32, 2), ConvConfig(32, 8, 32, 2), ConvConfig(32, 8, 32, 4),
              ConvConfig(16, 8, 32, 2))
WGRAD_SPACE = (WgradConfig(32, 32, 4, 4096), WgradConfig(16, 32, 4, 4096), WgradConfig(16, 32, 2, 8192),
               WgradConfig(32, 32, 8, 16384))


def conv_default(k: int, phased: bool) -> ConvConfig:
    # 2-D (h, w) boxes, chosen from the sm_90 compile report (kernels/README.md): at k >= 5 the unrolled kw
    # row holds more live values, so 8 elements per thread instead of 16 (far fewer registers); the phased
    # transposed conv keeps 2 warps (16 per thread), with which ptxas stores no spill at all.
    if k <= 3:
        return ConvConfig(64, 16, 32, 4)
    return ConvConfig(32, 8, 32, 2 if phased else 4)


def wgrad_default(k: int) -> WgradConfig:
    # [KP, BS, BC] accumulators: KP = 4 at k3, 8 at k5/k7, so fewer positions per sub-block there.
    return WgradConfig(32, 32, 4, 4096) if k <= 3 else WgradConfig(16, 32, 4, 4096)


def _interp_conv(dims, c: int) -> ConvConfig:
    # The interpreter pays per operation, not per element: one box over the whole volume where it fits.
    d, h, w = (next_pow2(v) for v in dims)
    return ConvConfig(min(d * h * w, 4096), w, min(next_pow2(c), 64), 4)


def _interp_wgrad(s: int, c: int) -> WgradConfig:
    return WgradConfig(min(next_pow2(s), 1024), min(next_pow2(c), 64), 4, 1)


def conv_box(cfg: ConvConfig, q_dims) -> Tuple[int, int, int]:
    """(TD, TH, TW) of a config on a (DQ, HQ, WQ) grid: W first (up to cfg.tw), then H, then D."""
    dq, hq, wq = q_dims
    tw = min(next_pow2(wq), cfg.tw, cfg.bs)
    th = min(next_pow2(hq), cfg.bs // tw)
    return cfg.bs // (tw * th), th, tw


def wgrad_split(cfg: WgradConfig, n: int, s_a: int, c: int, k: int) -> Tuple[int, int]:
    """(chunks per sample, sub-blocks per chunk) so that about cfg.programs programs run."""
    tiles = triton.cdiv(s_a, cfg.bs)
    per_chunk_programs = k * k * triton.cdiv(c, cfg.bc)
    chunks = max(1, min(tiles, cfg.programs // max(1, n * per_chunk_programs)))
    nsub = triton.cdiv(tiles, chunks)
    return triton.cdiv(tiles, nsub), nsub


def _sync_ms(fn) -> float:
    from triton.testing import do_bench
    return do_bench(fn, warmup=5, rep=25)


# -- launchers -----------------------------------------------------------------------------------------
def _numel(dims) -> int:
    d, h, w = dims
    return d * h * w


def _weight_taps(weight: torch.Tensor) -> torch.Tensor:
    c = weight.shape[0]
    return weight.detach().reshape(c, -1).t().contiguous().float()  # (k^3, C)


def _mode(stride: int, transposed: bool) -> str:
    # The kernel's mapping, part of a tuning key: a block's dgrad runs the transposed mapping of its forward,
    # so "transposed1" is the stride-1 block's dgrad, "transposed2" the up block's forward and the down
    # block's dgrad, "stride2" the down block's forward and the up block's dgrad.
    return f"{'transposed' if transposed else 'stride'}{stride}"


def _conv_rows(src, src_dims, w_taps, bias, out, out_dims, n, c, k, stride, transposed, stats, mode):
    # src: (N, prod(src_dims), C) rows; out: an NDHWC view over prod(out_dims) positions.
    phased = transposed and stride == 2  # 8 output-parity phases, each a (ceil(n/2),)*3 grid
    phases = 8 if phased else 1
    q_dims = tuple((v + 1) // 2 for v in out_dims) if phased else out_dims
    dummy = w_taps

    def launch(cfg: ConvConfig):
        td, th, tw = conv_box(cfg, q_dims)
        tiles_d, tiles_h, tiles_w = (triton.cdiv(v, b) for v, b in zip(q_dims, (td, th, tw)))
        tiles = tiles_d * tiles_h * tiles_w
        programs = n * phases * tiles
        s1p = s2p = dummy
        if stats:
            s1p = torch.empty((programs, c), device=src.device, dtype=torch.float32)
            s2p = torch.empty_like(s1p)
        _dwconv_kernel[(programs, triton.cdiv(c, cfg.bc))](
            src, w_taps, bias if bias is not None else dummy, out, s1p, s2p,
            c, *src_dims, _numel(src_dims), *out_dims, _numel(out_dims), *q_dims, tiles_h, tiles_w, tiles,
            K=k, STRIDE=stride, TRANSPOSED=transposed, HAS_BIAS=bias is not None, STATS=stats,
            TD=td, TH=th, TW=tw, BC=cfg.bc, num_warps=cfg.warps)
        return s1p, s2p

    default = _interp_conv(q_dims, c) if interpreting(src) else conv_default(k, phased)
    launch_key = tuning.key("conv", c, out_dims, k, f"{_mode(stride, transposed)}-{mode}", src.dtype)
    cfg = tuning.choose("conv", launch_key, default, CONV_SPACE, lambda cand: _sync_ms(lambda: launch(cand)),
                        src.device)
    s1p, s2p = launch(cfg)
    if stats:  # per-sample partials, summed in a fixed order
        return s1p.view(n, -1, c).sum(1), s2p.view(n, -1, c).sum(1)
    return None


def _wgrad(a, a_dims, b_, b_dims, n, c, k, stride, mode_name):
    s_a = _numel(a_dims)

    def launch(cfg: WgradConfig):
        chunks, nsub = wgrad_split(cfg, n, s_a, c, k)
        dwp = torch.empty((n * chunks, k ** 3, c), device=a.device, dtype=torch.float32)
        _wgrad_kernel[(n * chunks * k * k, triton.cdiv(c, cfg.bc))](
            a, b_, dwp, c, *a_dims, s_a, *b_dims, _numel(b_dims), chunks, nsub,
            K=k, KP=next_pow2(k), STRIDE=stride, BS=cfg.bs, BC=cfg.bc, num_warps=cfg.warps)
        return dwp

    default = _interp_wgrad(s_a, c) if interpreting(a) else wgrad_default(k)
    launch_key = tuning.key("wgrad", c, a_dims, k, mode_name, a.dtype)
    cfg = tuning.choose("wgrad", launch_key, default, WGRAD_SPACE, lambda cand: _sync_ms(lambda: launch(cand)),
                        a.device)
    return launch(cfg).sum(0)  # (k^3, C), summed over chunks in a fixed order


def _forward(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: int, transposed: bool):
    n, c = x.shape[:2]
    in_dims = tuple(x.shape[2:])
    out_dims = tuple(out_size(v, stride, transposed) for v in in_dims)
    k = weight.shape[-1]
    y = channels_last_empty(n, c, out_dims, x.dtype, x.device)
    b = bias.detach().float().contiguous() if bias is not None else None
    s1, s2 = _conv_rows(to_rows(x), in_dims, _weight_taps(weight), b, y.permute(0, 2, 3, 4, 1), out_dims,
                        n, c, k, stride, transposed, True, "fwd")
    return y, s1, s2


def _grad_total_blocks(s: int, c: int, interp: bool) -> Tuple[int, int]:
    if BLOCK_OVERRIDE is not None:
        return BLOCK_OVERRIDE["BS"], BLOCK_OVERRIDE["BC"]
    if interp:
        return min(next_pow2(s), 4096), min(next_pow2(c), 64)
    return 128, min(next_pow2(c), 32)


def _backward(gy, gs1, gs2, x, weight, y, stride: int, transposed: bool):
    n, c = x.shape[:2]
    in_dims, out_dims = tuple(x.shape[2:]), tuple(y.shape[2:])
    s_out = _numel(out_dims)
    k = weight.shape[-1]
    bs, bc = _grad_total_blocks(s_out, c, interpreting(x))
    gy_rows, y_rows, x_rows = to_rows(gy), to_rows(y), to_rows(x)
    tiles = triton.cdiv(s_out, bs)
    # g in x's dtype: the reference's autograd also rounds this gradient to it; halves dgrad/wgrad reads.
    g = torch.empty((n, s_out, c), device=x.device, dtype=x.dtype)
    dbp = torch.empty((n * tiles, c), device=x.device, dtype=torch.float32)
    _grad_total_kernel[(n * tiles, triton.cdiv(c, bc))](gy_rows, y_rows, gs1.float().contiguous(),
                                                        gs2.float().contiguous(), g, dbp, c, s_out, tiles,
                                                        BS=bs, BC=bc, num_warps=4)
    # wgrad sums over the positions of the smaller side, reading the other at STRIDE*p + t - P.
    if transposed:
        dw = _wgrad(x_rows, in_dims, g, out_dims, n, c, k, 2, _mode(2, True))
    else:
        dw = _wgrad(g, out_dims, x_rows, in_dims, n, c, k, stride, _mode(stride, False))
    dw = dw.t().reshape(weight.shape)  # fp32; the autograd wrapper casts
    # dx: the transposed op over g (stride 1: flipped taps; stride 2 <-> transposed stride 2).
    dx = channels_last_empty(n, c, in_dims, x.dtype, x.device)
    _conv_rows(g, out_dims, _weight_taps(weight), None, dx.permute(0, 2, 3, 4, 1), in_dims, n, c, k,
               2 if transposed else stride, not transposed, False, "dgrad")
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
