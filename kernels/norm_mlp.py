"""GroupNorm(groups=C)-apply + 1x1x1 expansion + exact GELU + 1x1x1 compression + residual, in Triton.

Contract: ``mednext_fast.ops.norm_mlp``. Activations are channels-last rows (N, S, C). The GroupNorm is a
per-(sample, channel) affine z = y*scale + shift computed from (s1, s2) on the host ((N, C) tensors only).

* forward: one program per (row tile, output-channel tile) loops over hidden chunks of BH channels:
  h = gelu(z @ W1c^T + b1c) stays in registers and is immediately multiplied into the compression
  accumulator, so the R*C hidden never reaches global memory.
* backward (nothing R*C-sized is saved or written): the hidden is recomputed from the saved y + stats.
  - ``_dx_kernel`` (per row tile): dz = sum over chunks of (gelu'(pre) * (dout @ W2c)) @ W1c; writes
    dy_direct = dz*scale, per-tile partials of A = sum dz*y, B = sum dz per (n, c), and of the compression
    bias gradient (sum of dout).
  - ``_dw_kernel`` (per hidden chunk x row split): per-split partials of dW1, dW2, db1, summed afterwards
    in a fixed order (deterministic, no atomics).
  - The (N, C) GroupNorm chain (s1, s2, gamma, beta) -> (scale, shift) is differentiated in closed form
    from A, B in ``_stats_backward``, so autograd through dwconv_stats -> norm_mlp gives exact gradients.

Low precision: under autocast the matmul operands are the activation dtype (the 1x1x1 weights are cast per
call, as autocast would; fp32 masters untouched and their gradients fp32), accumulation is fp32, and
pre-activation / hidden / output are rounded where the PyTorch reference rounds them. In the Triton
interpreter every dot runs in fp32 (its bf16 dot is broken).
"""
from typing import NamedTuple, Optional, Tuple

import torch
import triton
import triton.language as tl

from mednext_fast.ops import check_norm_mlp

from ._common import (autocast_activation, channels_last_empty, check_device, check_float, interpreting,
                      next_pow2, to_rows)

# Tests set this to force small blocks (several row tiles, hidden chunks and splits) in the interpreter.
BLOCK_OVERRIDE: Optional[dict] = None



# -- kernels -------------------------------------------------------------------------------------------
@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    # fp32 operands: exact fp32 products (no TF32) so the fp32 path matches the reference tightly.
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def _gelu(x):
    return 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))


@triton.jit
def _gelu_grad(x):
    cdf = 0.5 * (1.0 + tl.math.erf(x * 0.7071067811865476))
    return cdf + x * tl.exp(-0.5 * x * x) * 0.3989422804014327


@triton.jit
def _load_z(y_ptr, scale_ptr, shift_ptr, n, rows, row_ok, ci, ci_ok, S, C,
            ACT: tl.constexpr, DOT: tl.constexpr):
    """(y tile in fp32, z = y*scale + shift rounded to the activation dtype, as the reference does)."""
    mask = row_ok[:, None] & ci_ok[None, :]
    yv = tl.load(y_ptr + n.to(tl.int64) * S * C + rows[:, None] * C + ci[None, :], mask=mask,
                 other=0.0).to(tl.float32)
    sc = tl.load(scale_ptr + n * C + ci, mask=ci_ok, other=0.0)
    sh = tl.load(shift_ptr + n * C + ci, mask=ci_ok, other=0.0)
    z = tl.where(mask, yv * sc[None, :] + sh[None, :], 0.0)
    return yv, z.to(ACT).to(DOT)


@triton.jit
def _fwd_kernel(y_ptr, scale_ptr, shift_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, r_ptr, out_ptr,
                S, C, RC, CO, TILES,
                HAS_RES: tl.constexpr, ACT: tl.constexpr, DOT: tl.constexpr, IEEE: tl.constexpr,
                BM: tl.constexpr, BCI: tl.constexpr, BH: tl.constexpr, BCO: tl.constexpr):
    pid = tl.program_id(0)
    n = pid // TILES
    rows = (pid % TILES) * BM + tl.arange(0, BM)
    row_ok = rows < S
    ci = tl.arange(0, BCI)
    ci_ok = ci < C
    co = tl.program_id(1) * BCO + tl.arange(0, BCO)
    co_ok = co < CO
    _, z = _load_z(y_ptr, scale_ptr, shift_ptr, n, rows, row_ok, ci, ci_ok, S, C, ACT, DOT)
    acc = tl.zeros([BM, BCO], dtype=tl.float32)
    for h0 in range(0, RC, BH):
        hh = h0 + tl.arange(0, BH)
        h_ok = hh < RC
        w1t = tl.load(w1_ptr + hh[None, :] * C + ci[:, None], mask=ci_ok[:, None] & h_ok[None, :], other=0.0)
        b1 = tl.load(b1_ptr + hh, mask=h_ok, other=0.0)
        pre = (_dot(z, w1t, IEEE) + b1[None, :]).to(ACT).to(tl.float32)
        act = _gelu(pre).to(ACT).to(DOT)
        w2t = tl.load(w2_ptr + co[None, :] * RC + hh[:, None], mask=h_ok[:, None] & co_ok[None, :], other=0.0)
        acc += _dot(act, w2t, IEEE)
    b2 = tl.load(b2_ptr + co, mask=co_ok, other=0.0)
    out = (acc + b2[None, :]).to(ACT).to(tl.float32)
    mask = row_ok[:, None] & co_ok[None, :]
    idx = n.to(tl.int64) * S * CO + rows[:, None] * CO + co[None, :]
    if HAS_RES:
        out += tl.load(r_ptr + idx, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + idx, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _dx_kernel(y_ptr, scale_ptr, shift_ptr, w1_ptr, b1_ptr, w2_ptr, go_ptr, dy_ptr, a_ptr, b_ptr, db2_ptr,
               S, C, RC, CO, TILES,
               ACT: tl.constexpr, DOT: tl.constexpr, IEEE: tl.constexpr,
               BM: tl.constexpr, BCI: tl.constexpr, BH: tl.constexpr, BCO: tl.constexpr):
    pid = tl.program_id(0)
    n = pid // TILES
    rows = (pid % TILES) * BM + tl.arange(0, BM)
    row_ok = rows < S
    ci = tl.arange(0, BCI)
    ci_ok = ci < C
    co = tl.arange(0, BCO)
    co_ok = co < CO
    yv, z = _load_z(y_ptr, scale_ptr, shift_ptr, n, rows, row_ok, ci, ci_ok, S, C, ACT, DOT)
    go_raw = tl.load(go_ptr + n.to(tl.int64) * S * CO + rows[:, None] * CO + co[None, :],
                     mask=row_ok[:, None] & co_ok[None, :], other=0.0).to(tl.float32)
    # The compression bias gradient, per tile, from the output gradient already in registers (summing it on
    # the host would make an fp32 copy of the whole output gradient).
    tl.store(db2_ptr + pid.to(tl.int64) * CO + co, tl.sum(go_raw, axis=0), mask=co_ok)
    go = go_raw.to(ACT).to(DOT)
    dz = tl.zeros([BM, BCI], dtype=tl.float32)
    for h0 in range(0, RC, BH):
        hh = h0 + tl.arange(0, BH)
        h_ok = hh < RC
        w1t = tl.load(w1_ptr + hh[None, :] * C + ci[:, None], mask=ci_ok[:, None] & h_ok[None, :], other=0.0)
        b1 = tl.load(b1_ptr + hh, mask=h_ok, other=0.0)
        pre = (_dot(z, w1t, IEEE) + b1[None, :]).to(ACT).to(tl.float32)
        w2c = tl.load(w2_ptr + co[:, None] * RC + hh[None, :], mask=co_ok[:, None] & h_ok[None, :], other=0.0)
        dact = _dot(go, w2c, IEEE).to(ACT).to(tl.float32)
        dpre = (dact * _gelu_grad(pre)).to(ACT).to(DOT)
        dz += _dot(dpre, tl.trans(w1t), IEEE)
    dz = tl.where(row_ok[:, None] & ci_ok[None, :], dz.to(ACT).to(tl.float32), 0.0)
    sc = tl.load(scale_ptr + n * C + ci, mask=ci_ok, other=0.0)
    tl.store(dy_ptr + n.to(tl.int64) * S * C + rows[:, None] * C + ci[None, :],
             (dz * sc[None, :]).to(dy_ptr.dtype.element_ty), mask=row_ok[:, None] & ci_ok[None, :])
    # d scale[n, c] = sum dz*y and d shift[n, c] = sum dz; the host turns them into s1/s2/gamma/beta grads.
    tl.store(a_ptr + pid * C + ci, tl.sum(dz * yv, axis=0), mask=ci_ok)
    tl.store(b_ptr + pid * C + ci, tl.sum(dz, axis=0), mask=ci_ok)


@triton.jit
def _dw_kernel(y_ptr, scale_ptr, shift_ptr, w1_ptr, b1_ptr, w2_ptr, go_ptr, dw1_ptr, db1_ptr, dw2_ptr,
               S, C, RC, CO, TILES, NT, TPS,
               ACT: tl.constexpr, DOT: tl.constexpr, IEEE: tl.constexpr,
               BM: tl.constexpr, BCI: tl.constexpr, BH: tl.constexpr, BCO: tl.constexpr):
    # Program (hidden chunk, split): sums over row tiles [split*TPS, (split+1)*TPS) of all samples.
    hh = tl.program_id(0) * BH + tl.arange(0, BH)
    h_ok = hh < RC
    split = tl.program_id(1)
    ci = tl.arange(0, BCI)
    ci_ok = ci < C
    co = tl.arange(0, BCO)
    co_ok = co < CO
    w1t = tl.load(w1_ptr + hh[None, :] * C + ci[:, None], mask=ci_ok[:, None] & h_ok[None, :], other=0.0)
    b1 = tl.load(b1_ptr + hh, mask=h_ok, other=0.0)
    w2c = tl.load(w2_ptr + co[:, None] * RC + hh[None, :], mask=co_ok[:, None] & h_ok[None, :], other=0.0)
    dw1 = tl.zeros([BH, BCI], dtype=tl.float32)
    dw2 = tl.zeros([BCO, BH], dtype=tl.float32)
    db1 = tl.zeros([BH], dtype=tl.float32)
    for i in range(TPS):
        # The last split may run past the NT row tiles: such a tile reads sample N - 1 (clamped, so scale and
        # shift stay in bounds) with every row masked off (the bound folded into S, as newer Triton
        # interpreters reject a block mask combined with a scalar condition).
        tile = split * TPS + i
        n = tl.minimum(tile, NT - 1) // TILES
        rows = (tile % TILES) * BM + tl.arange(0, BM)
        row_ok = rows < tl.where(tile < NT, S, 0)
        _, z = _load_z(y_ptr, scale_ptr, shift_ptr, n, rows, row_ok, ci, ci_ok, S, C, ACT, DOT)
        go = tl.load(go_ptr + n.to(tl.int64) * S * CO + rows[:, None] * CO + co[None, :],
                     mask=row_ok[:, None] & co_ok[None, :], other=0.0).to(ACT).to(DOT)
        pre = (_dot(z, w1t, IEEE) + b1[None, :]).to(ACT).to(tl.float32)
        act = tl.where(row_ok[:, None], _gelu(pre), 0.0).to(ACT).to(DOT)
        dw2 += _dot(tl.trans(go), act, IEEE)
        dact = _dot(go, w2c, IEEE).to(ACT).to(tl.float32)
        dpre = (dact * _gelu_grad(pre)).to(ACT).to(DOT)
        dw1 += _dot(tl.trans(dpre), z, IEEE)
        db1 += tl.sum(dpre.to(tl.float32), axis=0)
    tl.store(dw1_ptr + (split * RC + hh[:, None]).to(tl.int64) * C + ci[None, :], dw1,
             mask=h_ok[:, None] & ci_ok[None, :])
    tl.store(dw2_ptr + (split * CO + co[:, None]).to(tl.int64) * RC + hh[None, :], dw2,
             mask=co_ok[:, None] & h_ok[None, :])
    tl.store(db1_ptr + split * RC + hh, db1, mask=h_ok)


# -- host side -----------------------------------------------------------------------------------------
_TL = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


def _dtypes(act: torch.dtype, interp: bool):
    dot = tl.float32 if (interp or act == torch.float32) else _TL[act]
    return _TL[act], dot, dot == tl.float32


def _blocks(c: int, rc: int, co: int, s: int, interp: bool, elem_bytes: int = 2) -> dict:
    if BLOCK_OVERRIDE is not None:
        return dict(BLOCK_OVERRIDE)
    bci, bco_all = max(16, next_pow2(c)), max(16, next_pow2(co))
    if interp:
        # Per-load cost dominates in the interpreter: whole volumes and whole hidden in one program.
        return dict(BM=max(16, min(next_pow2(s), 1024)), BH=max(16, min(next_pow2(rc), 256)),
                    BCO=bco_all, BCI=bci, warps=4, stages=1, splits=None)
    # Untuned GPU defaults. Per hidden chunk the weight tiles are BCI*BH + BH*BCO elements; keep them
    # (times the pipeline stages) well inside shared memory for C up to 512.
    widest = max(bci, bco_all)
    bm = 64 if widest <= 128 else 32
    bh = 64 if widest <= 64 else 32
    if elem_bytes == 4 and widest >= 256:
        bm, bh = 16, 16  # fp32 operands at C >= 256: the backward tiles otherwise exceed 227 KB of smem
    # dx holds dz (BM x C fp32) and the output gradient (BM x C) of a row tile: 16 rows at C = 512, where
    # larger tiles spill in its loop (sm_90 compile report, kernels/README.md).
    bm_dx = 16 if widest >= 512 else bm
    return dict(BM=bm, BM_DX=bm_dx, BH=bh, BCO=min(bco_all, 128), BCI=bci, warps=4 if widest <= 64 else 8,
                stages=2 if widest <= 128 else 1, splits=None)


def _affine(s1, s2, gamma, beta, count: int, eps: float):
    """Exactly the reference's scale/shift (fp32, (N, C)) and the intermediates the backward needs."""
    mean = s1 / count
    var_raw = s2 / count - mean * mean
    rstd = torch.rsqrt(var_raw.clamp_min(0) + eps)
    scale = rstd * gamma.float()
    shift = beta.float() - mean * rstd * gamma.float()
    return mean, var_raw, rstd, scale, shift


def _stats_backward(a, b, s1, s2, gamma, beta, count: int, eps: float):
    """Gradients of (s1, s2, gamma, beta) from A = dL/dscale and B = dL/dshift, all (N, C) fp32.

    scale = rstd*gamma, shift = beta - mean*rstd*gamma, rstd = (clamp(var, 0) + eps)^-1/2,
    var = s2/count - mean^2, mean = s1/count.
    """
    mean, var_raw, rstd, _, _ = _affine(s1, s2, gamma, beta, count, eps)
    g = gamma.float()
    d_rstd = g * (a - b * mean)
    d_gamma = (rstd * (a - b * mean)).sum(0)
    d_beta = b.sum(0)
    d_var = torch.where(var_raw >= 0, -0.5 * rstd * rstd * rstd * d_rstd, torch.zeros_like(d_rstd))
    d_mean = -b * rstd * g - 2.0 * mean * d_var
    return d_mean / count, d_var / count, d_gamma, d_beta


_TORCH_DOT = {tl.float32: torch.float32, tl.float16: torch.float16, tl.bfloat16: torch.bfloat16}


def _weights(w_expand, w_compress, c, co, act: torch.dtype, dot):
    # Cast once on the host, as autocast would (fp32 masters untouched): rounded to the activation dtype,
    # stored in the dot operand dtype. Halves the in-loop weight traffic and shared memory in bf16.
    rc = w_expand.shape[0]

    def prep(w, shape):
        return w.detach().reshape(shape).to(act).to(_TORCH_DOT[dot]).contiguous()
    return prep(w_expand, (rc, c)), prep(w_compress, (co, rc))


class _Launch(NamedTuple):
    """What the forward and backward launches share: sizes, dtypes, cast weights, tiles, GroupNorm affine."""
    n: int
    c: int
    spatial: tuple
    s: int
    act: object
    dot: object
    ieee: bool
    w1: torch.Tensor
    w2: torch.Tensor
    rc: int
    co: int
    cfg: dict
    scale: torch.Tensor
    shift: torch.Tensor


def _launch(y, s1, s2, gamma, beta, w_expand, w_compress, eps, count) -> _Launch:
    n, c = y.shape[:2]
    s = y[0, 0].numel()
    interp = interpreting(y)
    act, dot, ieee = _dtypes(y.dtype, interp)
    w1, w2 = _weights(w_expand, w_compress, c, w_compress.shape[0], y.dtype, dot)
    rc, co = w1.shape[0], w2.shape[0]
    cfg = _blocks(c, rc, co, s, interp, w1.element_size())
    _, _, _, scale, shift = _affine(s1.float(), s2.float(), gamma, beta, count or s, eps)
    return _Launch(n, c, tuple(y.shape[2:]), s, act, dot, ieee, w1, w2, rc, co, cfg,
                   scale.contiguous(), shift.contiguous())


def _out_dtype(y, residual):
    # As ``out + residual`` would promote.
    return y.dtype if residual is None else torch.promote_types(y.dtype, residual.dtype)


def _forward(y, s1, s2, gamma, beta, w_expand, b_expand, w_compress, b_compress, residual, eps, count):
    n, c, spatial, s, act, dot, ieee, w1, w2, rc, co, cfg, scale, shift = _launch(
        y, s1, s2, gamma, beta, w_expand, w_compress, eps, count)
    out = channels_last_empty(n, co, spatial, _out_dtype(y, residual), y.device)
    res_rows = to_rows(residual) if residual is not None else out
    tiles = triton.cdiv(s, cfg["BM"])
    grid = (n * tiles, triton.cdiv(co, cfg["BCO"]))
    _fwd_kernel[grid](to_rows(y), scale, shift, w1, b_expand.detach().float().contiguous(),
                      w2, b_compress.detach().float().contiguous(), res_rows,
                      out.permute(0, *range(2, len(spatial) + 2), 1), s, c, rc, co, tiles,
                      HAS_RES=residual is not None, ACT=act, DOT=dot, IEEE=ieee, BM=cfg["BM"], BCI=cfg["BCI"],
                      BH=cfg["BH"], BCO=cfg["BCO"], num_warps=cfg["warps"], num_stages=cfg["stages"])
    return out


def _backward(grad_out, y, s1, s2, gamma, beta, w_expand, b_expand, w_compress, eps, count):
    n, c, spatial, s, act, dot, ieee, w1, w2, rc, co, cfg, scale, shift = _launch(
        y, s1, s2, gamma, beta, w_expand, w_compress, eps, count)
    bm, bh, bci = cfg["BM"], cfg["BH"], cfg["BCI"]
    bm_dx = cfg.get("BM_DX", bm)  # the dx kernel keeps dz and the output gradient of a row tile in registers
    bco = max(16, next_pow2(co))  # the backward keeps every output channel of a row tile
    y_rows, go_rows = to_rows(y), to_rows(grad_out)
    b1 = b_expand.detach().float().contiguous()
    dx_tiles = triton.cdiv(s, bm_dx)
    dy = channels_last_empty(n, c, spatial, y.dtype, y.device)
    a_part = torch.empty((n * dx_tiles, c), device=y.device, dtype=torch.float32)
    b_part = torch.empty_like(a_part)
    db2_part = torch.empty((n * dx_tiles, co), device=y.device, dtype=torch.float32)
    _dx_kernel[(n * dx_tiles,)](y_rows, scale, shift, w1, b1, w2, go_rows,
                                dy.permute(0, *range(2, len(spatial) + 2), 1), a_part, b_part, db2_part,
                                s, c, rc, co, dx_tiles,
                                ACT=act, DOT=dot, IEEE=ieee, BM=bm_dx, BCI=bci, BH=bh, BCO=bco,
                                num_warps=cfg["warps"], num_stages=cfg["stages"])
    tiles = triton.cdiv(s, bm)
    nt = n * tiles
    hchunks = triton.cdiv(rc, bh)
    splits = cfg.get("splits")
    if splits is None:
        per_split = rc * c + co * rc + rc
        splits = max(1, min(nt, max(1, 1024 // hchunks), max(1, (64 << 20) // per_split)))
    tps = triton.cdiv(nt, splits)
    splits = triton.cdiv(nt, tps)
    dw1p = torch.empty((splits, rc, c), device=y.device, dtype=torch.float32)
    dw2p = torch.empty((splits, co, rc), device=y.device, dtype=torch.float32)
    db1p = torch.empty((splits, rc), device=y.device, dtype=torch.float32)
    _dw_kernel[(hchunks, splits)](y_rows, scale, shift, w1, b1, w2, go_rows, dw1p, db1p, dw2p,
                                  s, c, rc, co, tiles, nt, tps, ACT=act, DOT=dot, IEEE=ieee,
                                  BM=bm, BCI=bci, BH=bh, BCO=bco, num_warps=cfg["warps"], num_stages=cfg["stages"])
    a = a_part.view(n, dx_tiles, c).sum(1)
    b = b_part.view(n, dx_tiles, c).sum(1)
    ds1, ds2, dgamma, dbeta = _stats_backward(a, b, s1.float(), s2.float(), gamma, beta, count or s, eps)
    db2 = db2_part.sum(0)
    return dy, ds1, ds2, dgamma, dbeta, dw1p.sum(0), db1p.sum(0), dw2p.sum(0), db2


# -- torch.library registration -------------------------------------------------------------------------
@torch.library.custom_op("mednext_fast::norm_mlp", mutates_args=())
def _norm_mlp_op(y: torch.Tensor, s1: torch.Tensor, s2: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor,
                 w_expand: torch.Tensor, b_expand: torch.Tensor, w_compress: torch.Tensor,
                 b_compress: torch.Tensor, residual: Optional[torch.Tensor], eps: float,
                 count: int = 0) -> torch.Tensor:
    # count: the voxels s1 and s2 sum over; 0 means y's own.
    return _forward(y, s1, s2, gamma, beta, w_expand, b_expand, w_compress, b_compress, residual, eps, count)


@_norm_mlp_op.register_fake
def _(y, s1, s2, gamma, beta, w_expand, b_expand, w_compress, b_compress, residual, eps, count=0):
    return channels_last_empty(y.shape[0], w_compress.shape[0], tuple(y.shape[2:]), _out_dtype(y, residual),
                               y.device)


@torch.library.custom_op("mednext_fast::norm_mlp_backward", mutates_args=())
def _norm_mlp_backward_op(grad_out: torch.Tensor, y: torch.Tensor, s1: torch.Tensor, s2: torch.Tensor,
                          gamma: torch.Tensor, beta: torch.Tensor, w_expand: torch.Tensor,
                          b_expand: torch.Tensor, w_compress: torch.Tensor, eps: float, count: int) -> Tuple[
        torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
        torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward(grad_out, y, s1, s2, gamma, beta, w_expand, b_expand, w_compress, eps, count)


@_norm_mlp_backward_op.register_fake
def _(grad_out, y, s1, s2, gamma, beta, w_expand, b_expand, w_compress, eps, count):
    n, c = y.shape[:2]
    rc, co = w_expand.shape[0], w_compress.shape[0]

    def f32(*shape):
        return y.new_empty(shape, dtype=torch.float32)
    dy = channels_last_empty(n, c, tuple(y.shape[2:]), y.dtype, y.device)
    return dy, f32(n, c), f32(n, c), f32(c), f32(c), f32(rc, c), f32(rc), f32(co, rc), f32(co)


def _setup_context(ctx, inputs, output):
    y, s1, s2, gamma, beta, w_expand, b_expand, w_compress, b_compress, residual, eps, count = inputs
    ctx.eps, ctx.count = eps, count
    ctx.has_res = residual is not None
    ctx.res_dtype = residual.dtype if residual is not None else None
    ctx.dtypes = [t.dtype for t in (s1, s2, gamma, beta, w_expand, b_expand, w_compress, b_compress)]
    # Only the conv output, its statistics and the (small) parameters: nothing R*C x spatial.
    ctx.save_for_backward(y, s1, s2, gamma, beta, w_expand, b_expand, w_compress)


def _backward_autograd(ctx, grad_out):
    y, s1, s2, gamma, beta, w_expand, b_expand, w_compress = ctx.saved_tensors
    dy, ds1, ds2, dgamma, dbeta, dw1, db1, dw2, db2 = _norm_mlp_backward_op(
        grad_out, y, s1, s2, gamma, beta, w_expand, b_expand, w_compress, ctx.eps, ctx.count)
    grads = [g.to(dt) for g, dt in zip((ds1, ds2, dgamma, dbeta, dw1.reshape(w_expand.shape), db1,
                                        dw2.reshape(w_compress.shape), db2), ctx.dtypes)]
    d_res = grad_out.to(ctx.res_dtype) if ctx.has_res else None
    return (dy, *grads, d_res, None, None)


_norm_mlp_op.register_autograd(_backward_autograd, setup_context=_setup_context)


# -- public function -----------------------------------------------------------------------------------
def _check(y, s1, s2, gamma, beta, w_expand, b_expand, w_compress, b_compress, residual, count):
    name = "norm_mlp"
    check_norm_mlp(y, s1, s2, gamma, beta, w_expand, b_expand, w_compress, b_compress, residual, count, name=name)
    for what, t in (("y", y), ("gamma", gamma), ("beta", beta), ("w_expand", w_expand), ("b_expand", b_expand),
                    ("w_compress", w_compress), ("b_compress", b_compress), ("residual", residual)):
        if t is not None:
            check_float(name, what, t)
    c, co = y.shape[1], w_compress.shape[0]
    if max(c, co) * y[0, 0].numel() >= 2 ** 31:
        raise ValueError(f"{name}: a sample of {y[0, 0].numel()} voxels x {max(c, co)} channels is too large for "
                         "the kernels' 32-bit in-sample offsets")
    check_device(name, y, s1, s2, gamma, beta, w_expand, b_expand, w_compress, b_compress, residual)


def norm_mlp(y: torch.Tensor, s1: torch.Tensor, s2: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor,
             w_expand: torch.Tensor, b_expand: torch.Tensor, w_compress: torch.Tensor, b_compress: torch.Tensor,
             residual: Optional[torch.Tensor] = None, eps: float = 1e-5, *, count: Optional[int] = None,
             out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Triton ``mednext_fast.ops.norm_mlp``: GroupNorm(C groups) from (s1, s2) + MLP + residual.

    Output dtype: y's (the autocast dtype under autocast), promoted with the residual's dtype as
    ``out + residual`` would. The output is stored channels-last. Differentiable in every tensor input.
    ``out=`` is not supported: autograd saves the op's inputs, so it always writes a new tensor.
    """
    if out is not None:
        raise NotImplementedError("norm_mlp: the Triton backend takes no out= (its outputs are saved for "
                                  "backward); call it without out")
    y = autocast_activation(y)
    _check(y, s1, s2, gamma, beta, w_expand, b_expand, w_compress, b_compress, residual, count)
    return _norm_mlp_op(y, s1, s2, gamma, beta, w_expand, b_expand, w_compress, b_compress, residual, float(eps),
                        int(count or 0))


__all__ = ["norm_mlp"]
