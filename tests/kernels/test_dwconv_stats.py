"""Triton depthwise conv3d + GroupNorm statistics against mednext_fast.ops.dwconv_stats (forward and backward)."""
import importlib

import pytest
import torch

from mednext_fast import ops
from tests.kernels.conftest import DEVICE, needs_cuda
from tests.kernels.helpers import assert_close_rel, assert_within_reference_error, layout

dw_mod = importlib.import_module("mednext_fast.kernels.dwconv_stats")
tuning = importlib.import_module("mednext_fast.kernels.tuning")
dwconv_stats = dw_mod.dwconv_stats


def _loss_weights(y, s1, s2):
    # Random weights on every output so each gradient path (y, s1, s2) is exercised.
    g = torch.Generator(device="cpu").manual_seed(1)
    return [torch.randn(t.shape, generator=g).to(t.device, t.dtype) for t in (y, s1, s2)]


def _run(fn, x, w, b):
    y, s1, s2 = fn(x, w, b)
    gy, g1, g2 = _loss_weights(y, s1, s2)
    loss = (y.float() * gy.float()).sum() + (s1 * g1).sum() + (s2 * g2).sum()
    inputs = [t for t in (x, w, b) if t is not None]
    return (y, s1, s2), torch.autograd.grad(loss, inputs)


def _compare(x, w, b, fwd_tol=2e-6, grad_tol=2e-5):
    (y, s1, s2), grads = _run(dwconv_stats, x, w, b)
    (ry, r1, r2), rgrads = _run(ops.dwconv_stats, x, w, b)
    assert y.dtype == ry.dtype and y.shape == ry.shape
    assert s1.dtype == s2.dtype == torch.float32 and s1.shape == r1.shape
    assert_close_rel(y, ry, fwd_tol, "y")
    assert_close_rel(s1, r1, fwd_tol, "s1")
    assert_close_rel(s2, r2, fwd_tol, "s2")
    names = ["x", "weight", "bias"][:len(grads)]
    for name, g, rg in zip(names, grads, rgrads):
        assert g.shape == rg.shape and g.dtype == rg.dtype, name
        assert_close_rel(g, rg, grad_tol, f"grad {name}")


@pytest.mark.parametrize("k,c,spatial,kind,bias", [
    (3, 4, (6, 7, 9), "ncdhw", True),
    (5, 20, (8, 8, 8), "channels_last", True),
    (7, 32, (6, 7, 9), "noncontig", True),
    (3, 20, (5, 6, 7), "ncdhw", False),
])
def test_matches_reference(k, c, spatial, kind, bias):
    x = layout(torch.randn(2, c, *spatial, device=DEVICE), kind)
    w = (torch.randn(c, 1, k, k, k, device=DEVICE) / k ** 1.5).requires_grad_()
    b = torch.randn(c, device=DEVICE).requires_grad_() if bias else None
    _compare(x, w, b)


def test_small_tiles_partial_channel_blocks_and_subblocks(monkeypatch):
    # Several spatial tiles (last one partial), channel blocks (20 = 16 + 4) and wgrad sub-blocks:
    # the paths a GPU launch takes, which the interpreter's default whole-volume blocks skip.
    # (k only changes loop bounds here; k=3 keeps the interpreter quick.)
    monkeypatch.setattr(dw_mod, "BLOCK_OVERRIDE", dict(BS=64, BC=16))
    monkeypatch.setitem(tuning.FORCED, "conv", tuning.ConvConfig(64, 8, 16, 4))
    wgrad = tuning.WgradConfig(16, 16, 4, 80)
    assert dw_mod.wgrad_split(wgrad, 2, 175, 20, 3) == (2, 6)  # 2 chunks of 6 and 5 sub-blocks, the last partial
    monkeypatch.setitem(tuning.FORCED, "wgrad", wgrad)
    x = layout(torch.randn(2, 20, 5, 5, 7, device=DEVICE), "ncdhw")  # 175 = 2*64 + 47 positions
    w = (torch.randn(20, 1, 3, 3, 3, device=DEVICE) / 3 ** 1.5).requires_grad_()
    b = torch.randn(20, device=DEVICE).requires_grad_()
    _compare(x, w, b)


def test_output_layout_and_input_untouched():
    x = torch.randn(2, 4, 4, 5, 6, device=DEVICE)
    x_copy = x.clone()
    w = torch.randn(4, 1, 3, 3, 3, device=DEVICE)
    y, s1, s2 = dwconv_stats(x, w, None)
    assert y.is_contiguous(memory_format=torch.channels_last_3d)
    assert torch.equal(x, x_copy)
    # Per-sample statistics: swapping the samples swaps the rows.
    _, s1b, _ = dwconv_stats(x.flip(0), w, None)
    torch.testing.assert_close(s1b, s1.flip(0), rtol=0, atol=0)


def test_directional_derivative_matches_finite_difference():
    # Independent of the reference: d/dt L(x + t v) by central differences (fp32, tiny case).
    torch.manual_seed(3)
    x = torch.randn(1, 3, 4, 4, 5, device=DEVICE, requires_grad=True)
    w = torch.randn(3, 1, 3, 3, 3, device=DEVICE, requires_grad=True)
    b = torch.randn(3, device=DEVICE, requires_grad=True)
    gy = torch.randn(1, 3, 4, 4, 5, device=DEVICE)
    g1, g2 = torch.randn(1, 3, device=DEVICE), torch.randn(1, 3, device=DEVICE) / 20

    def loss(x, w, b):
        y, s1, s2 = dwconv_stats(x, w, b)
        return (y * gy).sum() + (s1 * g1).sum() + (s2 * g2).sum()

    grads = torch.autograd.grad(loss(x, w, b), (x, w, b))
    h = 1e-2
    with torch.no_grad():
        for i, (t, g) in enumerate(zip((x, w, b), grads)):
            v = torch.randn_like(t)
            args_p = [a.detach() + (h * v if j == i else 0) for j, a in enumerate((x, w, b))]
            args_m = [a.detach() - (h * v if j == i else 0) for j, a in enumerate((x, w, b))]
            fd = (loss(*args_p).double() - loss(*args_m).double()) / (2 * h)
            an = (g.double() * v.double()).sum()
            assert abs(fd - an) <= 2e-3 * max(1.0, abs(an)), (i, fd.item(), an.item())


def test_opcheck_registration():
    x = torch.randn(1, 3, 3, 4, 5, device=DEVICE, requires_grad=True)
    w = torch.randn(3, 1, 3, 3, 3, device=DEVICE, requires_grad=True)
    b = torch.randn(3, device=DEVICE, requires_grad=True)
    torch.library.opcheck(torch.ops.mednext_fast.dwconv_stats.default, (x, w, b),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_fake_tensor_shapes_strides_dtypes():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        x = torch.empty(2, 5, 4, 6, 7, device=DEVICE)
        y, s1, s2 = dwconv_stats(x, torch.empty(5, 1, 5, 5, 5, device=DEVICE), torch.empty(5, device=DEVICE))
    real = dwconv_stats(torch.randn(2, 5, 4, 6, 7, device=DEVICE), torch.randn(5, 1, 5, 5, 5, device=DEVICE),
                        torch.randn(5, device=DEVICE))
    for fake_t, real_t in zip((y, s1, s2), real):
        assert fake_t.shape == real_t.shape and fake_t.stride() == real_t.stride() and fake_t.dtype == real_t.dtype


@pytest.mark.parametrize("make,err,match", [
    (lambda: (torch.randn(1, 2, 4, 4, 4), torch.randn(2, 1, 4, 4, 4), None), ValueError, "odd"),
    (lambda: (torch.randn(1, 2, 4, 4, 4), torch.randn(2, 1, 9, 9, 9), None), ValueError, "<= 7"),
    (lambda: (torch.randn(1, 2, 4, 4, 4), torch.randn(3, 1, 3, 3, 3), None), ValueError, "weight must be"),
    (lambda: (torch.randn(1, 2, 4, 4, 4), torch.randn(2, 1, 3, 3, 3), torch.randn(3)), ValueError, "bias"),
    (lambda: (torch.randn(1, 2, 4, 4, 4).double(), torch.randn(2, 1, 3, 3, 3), None), TypeError, "float32"),
    (lambda: (torch.randint(0, 3, (1, 2, 4, 4, 4)), torch.randn(2, 1, 3, 3, 3), None), TypeError, "float32"),
    (lambda: (torch.randn(1, 2, 4, 4), torch.randn(2, 1, 3, 3), None), NotImplementedError, "3-D"),
])
def test_rejects_bad_input(make, err, match):
    x, w, b = make()
    with pytest.raises(err, match=match):
        dwconv_stats(x.to(DEVICE), w.to(DEVICE), None if b is None else b.to(DEVICE))


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("k", [3, 5, 7])
def test_low_precision_error_within_reference_error(dtype, k):
    # Judge the kernel's error against an fp32 reference by the error of PyTorch's own same-dtype run.
    c, spatial = 32, (16, 17, 18)
    x32 = torch.randn(2, c, *spatial, device="cuda")
    w = (torch.randn(c, 1, k, k, k, device="cuda") / k ** 1.5).requires_grad_()
    b = torch.randn(c, device="cuda").requires_grad_()
    (fy, f1, f2), fgrads = _run(ops.dwconv_stats, x32.clone().requires_grad_(), w, b)
    x_lp = x32.to(dtype).requires_grad_()
    (ty, t1, t2), tgrads = _run(dwconv_stats, x_lp, w, b)
    with torch.autocast("cuda", dtype=dtype):
        (ry, r1, r2), rgrads = _run(ops.dwconv_stats, x_lp, w, b)
    assert ty.dtype == dtype
    for what, t, r, f in (("y", ty, ry, fy), ("s1", t1, r1, f1), ("s2", t2, r2, f2)):
        assert_within_reference_error(t, r, f, 2, what)
    for what, t, r, f in zip(("x", "weight", "bias"), tgrads, rgrads, fgrads):
        assert_within_reference_error(t, r, f, 4, what)


@needs_cuda
def test_autocast_casts_activations_and_keeps_fp32_weight_grads():
    x = torch.randn(2, 8, 8, 8, 8, device="cuda", requires_grad=True)
    w = torch.randn(8, 1, 3, 3, 3, device="cuda", requires_grad=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y, s1, s2 = dwconv_stats(x, w, None)
    assert y.dtype == torch.bfloat16 and s1.dtype == torch.float32
    y.float().sum().backward()
    assert x.grad.dtype == torch.float32 and w.grad.dtype == torch.float32


@needs_cuda
def test_weight_gradients_are_bitwise_deterministic():
    # Partials per program reduced in a fixed order: repeated backward passes agree bit for bit.
    x = torch.randn(2, 48, 24, 24, 24, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(48, 1, 5, 5, 5, device="cuda", requires_grad=True)
    b = torch.randn(48, device="cuda", requires_grad=True)
    runs = [_run(dwconv_stats, x, w, b)[1] for _ in range(3)]
    for other in runs[1:]:
        for g, g0 in zip(other, runs[0]):
            assert torch.equal(g, g0)
