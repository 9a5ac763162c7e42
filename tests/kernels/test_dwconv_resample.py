"""Triton stride-2 and stride-2 transposed depthwise conv3d + GroupNorm statistics (the resampling blocks)
against mednext_fast.ops.dwconv_stats: forward, every gradient, composition into the down/up blocks."""
import importlib
import types

import pytest
import torch

import mednext_fast as mf
from mednext_fast import ops
from tests.kernels.conftest import DEVICE, needs_cuda
from tests.kernels.helpers import assert_close_rel, assert_within_reference_error, layout

dw_mod = importlib.import_module("mednext_fast.kernels.dwconv_stats")
nm_mod = importlib.import_module("mednext_fast.kernels.norm_mlp")
tuning = importlib.import_module("mednext_fast.kernels.tuning")
dwconv_stats = dw_mod.dwconv_stats

DOWN, UP = dict(stride=2), dict(transposed=True)


def _run(fn, x, w, b, kw):
    y, s1, s2 = fn(x, w, b, **kw)
    # Random weights on every output so each gradient path (y, s1, s2) is exercised.
    g = torch.Generator(device="cpu").manual_seed(1)
    gy, g1, g2 = [torch.randn(t.shape, generator=g).to(t.device, t.dtype) for t in (y, s1, s2)]
    loss = (y.float() * gy.float()).sum() + (s1 * g1).sum() + (s2 * g2).sum()
    inputs = [t for t in (x, w, b) if t is not None]
    return (y, s1, s2), torch.autograd.grad(loss, inputs)


def _compare(x, w, b, kw, fwd_tol=2e-6, grad_tol=2e-5):
    # The reference runs in float64 on NCDHW copies: PyTorch's own CPU fp32 depthwise conv3d weight gradient is
    # garbage for channels_last_3d inputs at stride 2, k=7 and small volumes (torch 2.13.0, seen here).
    (y, s1, s2), grads = _run(dwconv_stats, x, w, b, kw)
    refs = [t.detach().double().contiguous().requires_grad_() if t is not None else None for t in (x, w, b)]
    (ry, r1, r2), rgrads = _run(ops.dwconv_stats, *refs, kw)
    assert y.dtype == x.dtype and y.shape == ry.shape
    assert y.is_contiguous(memory_format=torch.channels_last_3d)
    assert s1.dtype == s2.dtype == torch.float32 and s1.shape == r1.shape
    assert_close_rel(y, ry, fwd_tol, "y")
    assert_close_rel(s1, r1, fwd_tol, "s1")
    assert_close_rel(s2, r2, fwd_tol, "s2")
    inputs = [t for t in (x, w, b) if t is not None]
    for name, t, g, rg in zip(["x", "weight", "bias"], inputs, grads, rgrads):
        assert g.shape == t.shape and g.dtype == t.dtype, name
        assert_close_rel(g, rg, grad_tol, f"grad {name}")


def _params(c, k, bias=True):
    w = (torch.randn(c, 1, k, k, k, device=DEVICE) / k ** 1.5).requires_grad_()
    b = torch.randn(c, device=DEVICE).requires_grad_() if bias else None
    return w, b


# Odd and even sizes (ceil(n/2) and 2m-1 edges), both channel counts, both layouts, with and without bias.
@pytest.mark.parametrize("kw,k,c,spatial,kind,bias", [
    (DOWN, 3, 4, (7, 8, 9), "ncdhw", True),
    (DOWN, 5, 20, (6, 6, 6), "channels_last", True),
    (DOWN, 7, 4, (7, 8, 9), "channels_last", False),
    (UP, 3, 20, (3, 4, 5), "channels_last", True),
    (UP, 5, 4, (3, 4, 5), "ncdhw", False),
    (UP, 7, 4, (3, 4, 5), "ncdhw", True),
], ids=["down-k3", "down-k5", "down-k7", "up-k3", "up-k5", "up-k7"])
def test_matches_reference(kw, k, c, spatial, kind, bias):
    torch.manual_seed(0)
    x = layout(torch.randn(2, c, *spatial, device=DEVICE), kind)
    w, b = _params(c, k, bias)
    _compare(x, w, b, kw)


@pytest.mark.parametrize("kw,spatial", [(DOWN, (6, 7, 9)), (UP, (3, 4, 5))], ids=["down", "up"])
def test_small_tiles_partial_channel_blocks_and_subblocks(monkeypatch, kw, spatial):
    # Several spatial tiles (last one partial), channel blocks (20 = 16 + 4) and wgrad sub-blocks on both
    # sides of the resampling: the paths a GPU launch takes, which the interpreter's whole-volume blocks skip.
    monkeypatch.setattr(dw_mod, "BLOCK_OVERRIDE", dict(BS=32, BC=16))
    monkeypatch.setitem(tuning.FORCED, "conv", tuning.ConvConfig(32, 4, 16, 4))
    wgrad = tuning.WgradConfig(16, 16, 4, 80)
    assert dw_mod.wgrad_split(wgrad, 2, 60, 20, 3) == (2, 2)  # the summed side has 60 positions either way
    monkeypatch.setitem(tuning.FORCED, "wgrad", wgrad)
    torch.manual_seed(1)
    x = layout(torch.randn(2, 20, *spatial, device=DEVICE), "ncdhw")
    w, b = _params(20, 3)
    _compare(x, w, b, kw)


@pytest.mark.parametrize("kw,shape,expected", [
    (DOWN, (2, 5, 4, 6, 7), (2, 5, 2, 3, 4)),
    (UP, (2, 5, 2, 3, 4), (2, 5, 3, 5, 7)),
    (dict(stride=1, transposed=True), (1, 5, 2, 3, 4), (1, 5, 3, 5, 7)),  # transposed is always stride 2
], ids=["down", "up", "up-stride-ignored"])
def test_fake_tensor_shapes_strides_dtypes(kw, shape, expected):
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        fake = dwconv_stats(torch.empty(*shape, device=DEVICE), torch.empty(5, 1, 3, 3, 3, device=DEVICE),
                            torch.empty(5, device=DEVICE), **kw)
    real = dwconv_stats(torch.randn(*shape, device=DEVICE), torch.randn(5, 1, 3, 3, 3, device=DEVICE),
                        torch.randn(5, device=DEVICE), **kw)
    assert tuple(real[0].shape) == expected
    for fake_t, real_t in zip(fake, real):
        assert fake_t.shape == real_t.shape and fake_t.stride() == real_t.stride() and fake_t.dtype == real_t.dtype


@pytest.mark.parametrize("stride,transposed", [(2, False), (2, True)], ids=["down", "up"])
def test_opcheck_registration(stride, transposed):
    x = torch.randn(1, 3, 3, 4, 5, device=DEVICE, requires_grad=True)
    w = torch.randn(3, 1, 3, 3, 3, device=DEVICE, requires_grad=True)
    b = torch.randn(3, device=DEVICE, requires_grad=True)
    torch.library.opcheck(torch.ops.mednext_fast.dwconv_stats.default, (x, w, b, stride, transposed),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_rejects_bad_stride():
    x, w = torch.randn(1, 2, 4, 4, 4, device=DEVICE), torch.randn(2, 1, 3, 3, 3, device=DEVICE)
    with pytest.raises(ValueError, match="stride must be 1 or 2"):
        dwconv_stats(x, w, None, stride=3)


@pytest.mark.parametrize("cls,out_ch,spatial", [(mf.MedNeXtDownBlock, 8, (5, 6, 7)),
                                                (mf.MedNeXtUpBlock, 3, (3, 4, 5))], ids=["down", "up"])
def test_composes_with_norm_mlp_into_the_resampling_blocks(cls, out_ch, spatial):
    # dwconv_stats -> norm_mlp (+ the block's 1x1 stride-2 res_conv, the up block's front pad) equals the
    # torch module path: outputs and every parameter / input gradient.
    torch.manual_seed(2)
    block = cls(4, out_ch, exp_r=2, kernel_size=3, do_res=True).to(DEVICE)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.3)
    triton_ops = types.SimpleNamespace(dwconv_stats=dwconv_stats, norm_mlp=nm_mod.norm_mlp)
    x = torch.randn(2, 4, *spatial, device=DEVICE, requires_grad=True)
    params = [p for _, p in block.named_parameters()]
    results = []
    for run in (lambda: block(x), lambda: block(x, ops=triton_ops)):
        out = run()
        weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(3)).to(out.device)
        results.append((out, torch.autograd.grad((out * weights).sum(), [x] + params)))
    (ref, ref_grads), (got, got_grads) = results
    assert block.backend == "torch"
    assert_close_rel(got, ref, 1e-5, "out")
    if cls is mf.MedNeXtUpBlock:
        assert got.shape[2:] == tuple(2 * s for s in spatial)
        assert (got[:, :, 0] == 0).all() and (got[:, :, :, 0] == 0).all() and (got[..., 0] == 0).all()
    names = ["x"] + [name for name, _ in block.named_parameters()]
    ref_by_name = dict(zip(names, ref_grads))
    for name, g, rg in zip(names, got_grads, ref_grads):
        if name == "conv1.bias":
            # Per-channel GroupNorm cancels the conv bias: its exact gradient is 0, both hold rounding noise.
            assert g.abs().max() < 1e-4 * ref_by_name["conv1.weight"].abs().max()
            continue
        assert_close_rel(g, rg, 1e-4, f"grad {name}")


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kw,spatial", [(DOWN, (17, 18, 19)), (UP, (9, 10, 11))], ids=["down", "up"])
@pytest.mark.parametrize("k", [3, 7])
def test_low_precision_error_within_reference_error(dtype, kw, spatial, k):
    # Judge the kernel's error against an fp32 reference by the error of PyTorch's own same-dtype run.
    c = 32
    x32 = torch.randn(2, c, *spatial, device="cuda")
    w, b = _params(c, k)  # DEVICE is cuda here
    (fy, f1, f2), fgrads = _run(ops.dwconv_stats, x32.clone().requires_grad_(), w, b, kw)
    x_lp = x32.to(dtype).requires_grad_()
    (ty, t1, t2), tgrads = _run(dwconv_stats, x_lp, w, b, kw)
    with torch.autocast("cuda", dtype=dtype):
        (ry, r1, r2), rgrads = _run(ops.dwconv_stats, x_lp, w, b, kw)
    assert ty.dtype == dtype
    for what, t, r, f in (("y", ty, ry, fy), ("s1", t1, r1, f1), ("s2", t2, r2, f2)):
        assert_within_reference_error(t, r, f, 2, what)
    for what, t, r, f in zip(("x", "weight", "bias"), tgrads, rgrads, fgrads):
        assert_within_reference_error(t, r, f, 4, what)


@needs_cuda
@pytest.mark.parametrize("kw", [DOWN, UP], ids=["down", "up"])
def test_weight_gradients_are_bitwise_deterministic(kw):
    x = torch.randn(2, 48, 24, 24, 24, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w, b = _params(48, 5)
    runs = [_run(dwconv_stats, x, w, b, kw)[1] for _ in range(3)]
    for other in runs[1:]:
        for g, g0 in zip(other, runs[0]):
            assert torch.equal(g, g0)
