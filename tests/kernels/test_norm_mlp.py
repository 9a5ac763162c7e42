"""Triton GroupNorm-apply + MLP + residual against mednext_fast.ops.norm_mlp, alone and chained after
dwconv_stats as a whole MedNeXt block (forward, every gradient, saved tensors, registration)."""
import importlib

import pytest
import torch

from mednext_fast import ops
from tests.kernels.conftest import DEVICE, needs_cuda
from tests.kernels.helpers import assert_close_rel, assert_within_reference_error, block_params, layout

mlp_mod = importlib.import_module("mednext_fast.kernels.norm_mlp")
norm_mlp = mlp_mod.norm_mlp
dwconv_stats = importlib.import_module("mednext_fast.kernels.dwconv_stats").dwconv_stats

MLP_PARAMS = ("gamma", "beta", "w_expand", "b_expand", "w_compress", "b_compress")


def _stats_inputs(n, c, spatial, kind):
    y = layout(torch.randn(n, c, *spatial, device=DEVICE) * 2 + 0.5, kind)
    y32 = y.detach().float()
    dims = tuple(range(2, y.dim()))
    return y, y32.sum(dims).requires_grad_(), (y32 * y32).sum(dims).requires_grad_()


def _mlp_run(fn, y, s1, s2, p, residual):
    out = fn(y, s1, s2, *(p[name] for name in MLP_PARAMS), residual=residual)
    g = torch.Generator(device="cpu").manual_seed(2)
    go = torch.randn(out.shape, generator=g).to(out.device, out.dtype)
    inputs = [y, s1, s2, *(p[name] for name in MLP_PARAMS)] + ([residual] if residual is not None else [])
    return out, torch.autograd.grad((out.float() * go.float()).sum(), inputs)


def _compare_mlp(c, r, co, spatial, kind, with_res, fwd_tol=2e-6, grad_tol=2e-5):
    y, s1, s2 = _stats_inputs(2, c, spatial, kind)
    p = block_params(c, r, co, 3)
    res = layout(torch.randn(2, co, *spatial, device=DEVICE), kind) if with_res else None
    out, grads = _mlp_run(norm_mlp, y, s1, s2, p, res)
    ref, rgrads = _mlp_run(ops.norm_mlp, y, s1, s2, p, res)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert_close_rel(out, ref, fwd_tol, "out")
    names = ["y", "s1", "s2", *MLP_PARAMS, "residual"]
    for name, g, rg in zip(names, grads, rgrads):
        assert g.shape == rg.shape and g.dtype == rg.dtype, name
        assert_close_rel(g, rg, grad_tol, f"grad {name}")


@pytest.mark.parametrize("c,r,co,spatial,kind,with_res", [
    (4, 2, 4, (6, 7, 9), "ncdhw", True),
    (20, 3, 20, (8, 8, 8), "channels_last", False),
    (32, 4, 32, (6, 7, 9), "noncontig", True),
    (20, 2, 12, (5, 6, 7), "ncdhw", True),   # C_out != C
])
def test_matches_reference(c, r, co, spatial, kind, with_res):
    _compare_mlp(c, r, co, spatial, kind, with_res)


def test_count_of_a_chunk_matches_reference():
    # y is one chunk of planes of a larger output whose statistics s1, s2 sum over `count` voxels:
    # forward and every gradient (the closed-form statistics backward divides by count too).
    y, _, _ = _stats_inputs(2, 6, (3, 4, 5), "ncdhw")
    whole = torch.randn(2, 6, 7, 4, 5, device=DEVICE) * 2 + 0.5
    s1 = whole.sum((2, 3, 4)).requires_grad_()
    s2 = (whole * whole).sum((2, 3, 4)).requires_grad_()
    p = block_params(6, 2, 6, 3)
    res = torch.randn(2, 6, 3, 4, 5, device=DEVICE, requires_grad=True)
    results = []
    for fn in (norm_mlp, ops.norm_mlp):
        out = fn(y, s1, s2, *(p[name] for name in MLP_PARAMS), residual=res, count=whole[0, 0].numel())
        inputs = [y, s1, s2, *(p[name] for name in MLP_PARAMS), res]
        results.append((out, torch.autograd.grad((out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum(),
                                                 inputs)))
    (out, grads), (ref, rgrads) = results
    assert_close_rel(out, ref, 2e-6, "out")
    for name, g, rg in zip(["y", "s1", "s2", *MLP_PARAMS, "residual"], grads, rgrads):
        assert_close_rel(g, rg, 2e-5, f"grad {name}")


def test_options_it_lacks_say_so():
    y, s1, s2 = _stats_inputs(1, 4, (3, 4, 5), "ncdhw")
    p = {k: v.detach() for k, v in block_params(4, 2, 4, 3).items()}
    with pytest.raises(NotImplementedError, match="no out="):
        norm_mlp(y.detach(), s1.detach(), s2.detach(), *(p[name] for name in MLP_PARAMS), out=y.detach())
    for option in (dict(planes=(0, 1)), dict(out=y.detach()), dict(stats_only=True)):
        with pytest.raises(NotImplementedError, match=f"no {next(iter(option))}="):
            dwconv_stats(y.detach(), p["w_dw"], None, **option)


def test_small_tiles_hidden_chunks_output_tiles_and_splits(monkeypatch):
    # Row tiles with a partial last one, hidden chunks with a partial last one (60 = 3*16 + 12),
    # two output-channel tiles (20 = 16 + 4) and several weight-gradient splits: the GPU launch paths.
    monkeypatch.setattr(mlp_mod, "BLOCK_OVERRIDE", dict(BM=64, BM_DX=16, BH=16, BCO=16, BCI=32, warps=4, stages=1,
                                                        splits=3))
    _compare_mlp(20, 3, 20, (5, 5, 7), "ncdhw", True)


def test_directional_derivative_matches_finite_difference():
    # Independent of the reference: central differences of a scalar loss along random directions.
    torch.manual_seed(4)
    y, s1, s2 = _stats_inputs(1, 4, (3, 4, 5), "ncdhw")
    p = block_params(4, 2, 4, 3)
    res = torch.randn(1, 4, 3, 4, 5, device=DEVICE, requires_grad=True)
    go = torch.randn(1, 4, 3, 4, 5, device=DEVICE)
    inputs = [y, s1, s2, *(p[name] for name in MLP_PARAMS), res]

    def loss(*args):
        return (norm_mlp(*args[:9], residual=args[9]) * go).sum()

    grads = torch.autograd.grad(loss(*inputs), inputs)
    with torch.no_grad():
        for i, (t, g) in enumerate(zip(inputs, grads)):
            v = torch.randn_like(t)
            # s2 must stay >= s1^2/count (a variance): tiny steps there, moderate ones elsewhere.
            h = 1e-3 if i in (1, 2) else 1e-2
            plus = [a.detach() + h * v if j == i else a.detach() for j, a in enumerate(inputs)]
            minus = [a.detach() - h * v if j == i else a.detach() for j, a in enumerate(inputs)]
            fd = (loss(*plus).double() - loss(*minus).double()) / (2 * h)
            an = (g.double() * v.double()).sum()
            assert abs(fd - an) <= 1e-2 * max(1.0, abs(an)), (i, fd.item(), an.item())


def _block(fns, x, p, residual=True):
    dw, nm = fns
    y, s1, s2 = dw(x, p["w_dw"], p["b_dw"])
    return nm(y, s1, s2, *(p[name] for name in MLP_PARAMS), residual=x if residual else None)


@pytest.mark.parametrize("k,c,r,spatial,kind", [
    (3, 4, 2, (6, 7, 9), "ncdhw"),
    (5, 20, 3, (6, 7, 9), "channels_last"),
    (7, 32, 2, (8, 8, 8), "noncontig"),
])
def test_whole_block_forward_and_every_gradient(k, c, r, spatial, kind):
    x = layout(torch.randn(2, c, *spatial, device=DEVICE), kind)
    p = block_params(c, r, c, k)
    names = ["x", *p]
    leaves = [x, *p.values()]
    out = _block((dwconv_stats, norm_mlp), x, p)
    ref = _block((ops.dwconv_stats, ops.norm_mlp), x, p)
    assert_close_rel(out, ref, 5e-6, "out")
    go = torch.randn_like(ref)
    grads = torch.autograd.grad((out * go).sum(), leaves)
    rgrads = torch.autograd.grad((ref * go).sum(), leaves)
    for name, g, rg in zip(names, grads, rgrads):
        if name == "b_dw":
            # Per-channel GroupNorm cancels the conv bias: its exact gradient is 0, both runs hold rounding
            # noise only; require that noise to be tiny next to the conv weight's gradient.
            scale = rgrads[names.index("w_dw")].abs().max()
            assert g.abs().max() <= 1e-4 * scale and rg.abs().max() <= 1e-4 * scale
            continue
        assert_close_rel(g, rg, 5e-5, f"grad {name}")


def test_backward_saves_no_hidden_sized_tensor():
    n, c, r, spatial = 2, 8, 4, (6, 6, 6)
    x = torch.randn(n, c, *spatial, device=DEVICE, requires_grad=True)
    p = block_params(c, r, c, 3)
    activation = n * c * 6 ** 3

    def saved_sizes(fns):
        sizes = []

        def pack(t):
            sizes.append(t.numel())
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = _block(fns, x, p)
        return out, sizes

    ref_out, ref_sizes = saved_sizes((ops.dwconv_stats, ops.norm_mlp))
    assert max(ref_sizes) >= r * activation  # the eager reference does save the R*C hidden (test can fail)
    out, sizes = saved_sizes((dwconv_stats, norm_mlp))
    assert max(sizes) <= activation, sizes
    # x and y: two activation-sized tensors (y is saved once per op but shares storage).
    assert sum(s for s in sizes if s >= activation) <= 3 * activation, sizes
    out.sum().backward()


def test_opcheck_registration():
    y, s1, s2 = _stats_inputs(1, 4, (3, 4, 5), "ncdhw")
    p = block_params(4, 2, 4, 3)
    res = torch.randn(1, 4, 3, 4, 5, device=DEVICE, requires_grad=True)
    args = (y, s1, s2, *(p[name] for name in MLP_PARAMS), res, 1e-5)
    torch.library.opcheck(torch.ops.mednext_fast.norm_mlp.default, args,
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_fake_tensor_matches_real_metadata():
    from torch._subclasses.fake_tensor import FakeTensorMode
    p = {k: v.detach() for k, v in block_params(4, 2, 6, 3).items()}
    real_args = [torch.randn(2, 4, 3, 4, 5, device=DEVICE), torch.randn(2, 4, device=DEVICE) * 0,
                 torch.ones(2, 4, device=DEVICE) * 60, *(p[name] for name in MLP_PARAMS)]
    real = norm_mlp(*real_args, residual=torch.randn(2, 6, 3, 4, 5, device=DEVICE))
    with FakeTensorMode() as mode:
        fake_args = [mode.from_tensor(t) for t in real_args]
        fake = norm_mlp(*fake_args, residual=torch.empty(2, 6, 3, 4, 5, device=DEVICE))
    assert fake.shape == real.shape and fake.stride() == real.stride() and fake.dtype == real.dtype


def test_torch_compile_traces_the_block_without_graph_breaks():
    torch._dynamo.reset()
    x = torch.randn(1, 4, 3, 4, 5, device=DEVICE)
    p = {k: v.detach() for k, v in block_params(4, 2, 4, 3).items()}
    explanation = torch._dynamo.explain(lambda t: _block((dwconv_stats, norm_mlp), t, p))(x)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1


def _bad(**change):
    y, s1, s2 = _stats_inputs(1, 4, (3, 4, 5), "ncdhw")
    args = dict(y=y.detach(), s1=s1.detach(), s2=s2.detach(),
                **{k: v.detach() for k, v in block_params(4, 2, 4, 3).items() if k in MLP_PARAMS})
    args.update(change)
    return args


@pytest.mark.parametrize("change,err,match", [
    (dict(s1=torch.zeros(1, 4, dtype=torch.float64)), ValueError, "s1 must be float32"),
    (dict(s2=torch.zeros(1, 5)), ValueError, "s2 must be"),
    (dict(gamma=torch.ones(5)), ValueError, "gamma must be"),
    (dict(w_expand=torch.zeros(8, 5)), ValueError, "w_expand must be"),
    (dict(b_expand=torch.zeros(9)), ValueError, "b_expand must be"),
    (dict(w_compress=torch.zeros(4, 9, 1, 1, 1)), ValueError, "w_compress must be"),
    (dict(residual=torch.zeros(1, 4, 3, 4, 6)), ValueError, "residual must be"),
    (dict(y=torch.zeros(1, 4, 3, 4, 5, dtype=torch.float64)), TypeError, "float32"),
])
def test_rejects_bad_input(change, err, match):
    args = _bad(**{k: v.to(DEVICE) for k, v in change.items()})
    with pytest.raises(err, match=match):
        norm_mlp(**args)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("k,c,r", [(3, 32, 4), (5, 20, 2), (7, 64, 3)])
def test_low_precision_block_error_within_reference_error(dtype, k, c, r):
    # Triton under autocast vs PyTorch under autocast, both measured against the fp32 PyTorch block.
    spatial = (16, 17, 18)
    x = torch.randn(2, c, *spatial, device="cuda", requires_grad=True)
    p = block_params(c, r, c, k, device="cuda")
    leaves = [x, *p.values()]
    go = torch.randn(2, c, *spatial, device="cuda")

    def run(fns, autocast):
        with torch.autocast("cuda", dtype=dtype, enabled=autocast):
            out = _block(fns, x, p)
        return out, torch.autograd.grad((out.float() * go).sum(), leaves)

    f_out, f_grads = run((ops.dwconv_stats, ops.norm_mlp), False)
    r_out, r_grads = run((ops.dwconv_stats, ops.norm_mlp), True)
    t_out, t_grads = run((dwconv_stats, norm_mlp), True)
    assert t_out.dtype == r_out.dtype
    assert_within_reference_error(t_out, r_out, f_out, 2, "out")
    for name, t, r_, f in zip(["x", *p], t_grads, r_grads, f_grads):
        if name == "b_dw":
            continue  # exact gradient 0 (GroupNorm cancels it): both are noise
        assert t.dtype == f.dtype, name
        assert_within_reference_error(t, r_, f, 4, name)


def test_torch_compile_fullgraph_forward_and_backward():
    # aot_eager traces forward and backward through the fake kernels, then runs the real ones.
    torch._dynamo.reset()
    x = torch.randn(1, 4, 3, 4, 5, device=DEVICE, requires_grad=True)
    p = block_params(4, 2, 4, 3)
    leaves = [x, *p.values()]
    compiled = torch.compile(lambda t: _block((dwconv_stats, norm_mlp), t, p), backend="aot_eager", fullgraph=True)
    out = compiled(x)
    grads = torch.autograd.grad(out.square().sum(), leaves)
    ref = _block((ops.dwconv_stats, ops.norm_mlp), x, p)
    rgrads = torch.autograd.grad(ref.square().sum(), leaves)
    assert_close_rel(out, ref, 5e-6, "out")
    for name, g, rg in zip(["x", *p], grads, rgrads):
        if name != "b_dw":
            assert_close_rel(g, rg, 5e-5, f"grad {name}")


def test_fp16_autocast_path_against_fp32_reference():
    # The low-precision plumbing (activation cast by the wrapper, fp16 storage, rounding points, fp32
    # weight grads) on whatever device runs the kernels; fp16 because the interpreter cannot do bf16.
    x = torch.randn(2, 8, 5, 6, 7, device=DEVICE, requires_grad=True)
    p = block_params(8, 2, 8, 3)
    leaves = [x, *p.values()]
    go = torch.randn(2, 8, 5, 6, 7, device=DEVICE)
    with torch.autocast(DEVICE, dtype=torch.float16):
        y, s1, s2 = dwconv_stats(x, p["w_dw"], p["b_dw"])
        out = norm_mlp(y, s1, s2, *(p[name] for name in MLP_PARAMS), residual=x)
    assert y.dtype == torch.float16 and s1.dtype == torch.float32
    assert out.dtype == torch.float32  # fp16 MLP output + fp32 residual promotes, as in the reference
    grads = torch.autograd.grad((out * go).sum(), leaves)
    ref = _block((ops.dwconv_stats, ops.norm_mlp), x, p)
    rgrads = torch.autograd.grad((ref * go).sum(), leaves)
    assert_close_rel(out, ref, 5e-3, "out")
    for name, g, rg in zip(["x", *p], grads, rgrads):
        assert g.dtype == torch.float32, name
        if name != "b_dw":
            assert_close_rel(g, rg, 2e-2, f"grad {name}")


@pytest.mark.parametrize("mean,tol", [(0.0, 2e-5), (1e5, 2e-4)])
def test_statistics_stay_accurate_at_large_mean(mean, tol):
    # GroupNorm's variance comes from fp32 sums (E[y^2] - E[y]^2 over per-program partials), so a large mean
    # costs accuracy: at mean 1e5, std 0.5 the block without residual (which would hide the error) is within
    # about 1e-4 of a float64 reference (PyTorch fp32: ~1e-6). A change to how the statistics are reduced
    # must not make it worse; the tolerances are about twice today's errors.
    torch.manual_seed(4)
    c = 8
    x = mean + 0.5 * torch.randn(2, c, 12, 12, 12, device=DEVICE)
    p = block_params(c, 2, c, 3)
    p64 = {name: v.detach().double() for name, v in p.items()}
    want = _block((ops.dwconv_stats, ops.norm_mlp), x.double(), p64, residual=False)
    got = _block((dwconv_stats, norm_mlp), x, p, residual=False)
    assert_close_rel(got, want, tol, f"out at mean {mean:g}")
