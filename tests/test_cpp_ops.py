"""The C++ ops (mednext_fast._C via mednext_fast.backends.cpp) against the PyTorch references in mednext_fast/ops.py.

Skipped, with the reason, when the extension is not built (`pip install --no-build-isolation -e .`).
"""
import pytest
import torch

from mednext_fast import ops
from mednext_fast.backends import cpp as cpp_ops

OK, WHY = cpp_ops.available()
pytestmark = pytest.mark.skipif(not OK, reason=WHY)

CL = torch.channels_last_3d


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def rel_err(got, ref):
    return ((got - ref).abs().max() / ref.abs().max().clamp_min(1e-6)).item()


def layout(t, name):
    return t.contiguous(memory_format=CL) if name == "cl3d" else t.contiguous()


MODES = {"stride1": (1, False), "stride2": (2, False), "transposed": (2, True)}


@pytest.mark.parametrize("fmt", ["ncdhw", "cl3d"])
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("k", [3, 5, 7])
def test_dwconv_stats_matches_reference(k, mode, fmt, threads):
    stride, transposed = MODES[mode]
    g = torch.Generator().manual_seed(k * 10 + len(mode))
    # batch 2, odd and non-cubic sizes, W narrower than k=7, channels off the vector width (33 = 2*16+1)
    x = layout(torch.randn(2, 33, 7, 10, 5, generator=g) + 0.5, fmt)
    w = torch.randn(33, 1, k, k, k, generator=g)
    b = torch.randn(33, generator=g) if k != 5 else None
    ref = ops.dwconv_stats(x, w, b, stride=stride, transposed=transposed)
    with torch.no_grad():
        got = cpp_ops.dwconv_stats(x, w, b, stride=stride, transposed=transposed)
    assert got[0].shape == ref[0].shape
    assert got[0].is_contiguous(memory_format=CL)
    for name, a, r in zip(("y", "s1", "s2"), got, ref):
        assert a.dtype == torch.float32 and a.shape == r.shape, name
        assert rel_err(a, r) <= 1e-4, (name, rel_err(a, r))


@pytest.mark.parametrize("shape", [(1, 20, 16, 3, 19), (3, 1, 1, 1, 1), (1, 16, 2, 2, 40)],
                         ids=["c20", "c1-single-voxel", "c16-long-w"])
@pytest.mark.parametrize("mode", list(MODES))
def test_dwconv_stats_edge_shapes(shape, mode):
    stride, transposed = MODES[mode]
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(*shape, generator=g)
    w = torch.randn(shape[1], 1, 3, 3, 3, generator=g)
    b = torch.randn(shape[1], generator=g)
    ref = ops.dwconv_stats(x, w, b, stride=stride, transposed=transposed)
    got = cpp_ops.dwconv_stats(x, w, b, stride=stride, transposed=transposed)
    for a, r in zip(got, ref):
        assert a.shape == r.shape and rel_err(a, r) <= 1e-4


def test_dwconv_stats_every_isa_build_agrees():
    """The AVX-512 / AVX2 / baseline builds all match the reference (those this CPU can run)."""
    from mednext_fast import _C
    before = _C.isa()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 37, 6, 5, 23, generator=g)
    w = torch.randn(37, 1, 5, 5, 5, generator=g)
    ran = []
    try:
        for isa in ("default", "avx2", "avx512"):
            if not _C.set_isa(isa):
                continue
            ran.append(isa)
            for stride, transposed in MODES.values():
                ref = ops.dwconv_stats(x, w, None, stride=stride, transposed=transposed)
                got = cpp_ops.dwconv_stats(x, w, None, stride=stride, transposed=transposed)
                assert all(rel_err(a, r) <= 1e-4 for a, r in zip(got, ref)), (isa, stride, transposed)
    finally:
        assert _C.set_isa(before)
    assert "default" in ran
    assert not _C.set_isa("sse9"), "an unknown ISA name must be refused"


def test_dwconv_stats_large_volume_statistics():
    """fp32 sums over 24^3 voxels with a large mean stay within the tolerance (double accumulation)."""
    g = torch.Generator().manual_seed(7)
    x = (torch.randn(1, 16, 24, 24, 24, generator=g) * 0.1 + 3.0).contiguous(memory_format=CL)
    w = torch.randn(16, 1, 3, 3, 3, generator=g)
    ref = ops.dwconv_stats(x.double(), w.double(), None)
    got = cpp_ops.dwconv_stats(x, w, None)
    assert rel_err(got[1].double(), ref[1]) <= 1e-5
    assert rel_err(got[2].double(), ref[2]) <= 1e-5


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("k", [3, 7])
def test_dwconv_stats_plane_ranges_are_slices_of_the_whole(k, mode, threads):
    """planes=(b, e) computes output D-planes [b, e) only: the same values as that slice of the whole
    output, and statistics over just those planes (first, middle, last and single-plane ranges)."""
    stride, transposed = MODES[mode]
    g = torch.Generator().manual_seed(k + stride)
    x = torch.randn(2, 20, 9, 6, 7, generator=g).contiguous(memory_format=CL)
    w, b = torch.randn(20, 1, k, k, k, generator=g), torch.randn(20, generator=g)
    with torch.no_grad():
        whole, _, _ = cpp_ops.dwconv_stats(x, w, b, stride=stride, transposed=transposed)
        depth = whole.shape[2]
        for begin, end in [(0, 2), (1, depth - 1), (depth - 1, depth), (0, depth)]:
            part, s1, s2 = cpp_ops.dwconv_stats(x, w, b, stride=stride, transposed=transposed, planes=(begin, end))
            want = whole[:, :, begin:end]
            assert part.shape == want.shape and part.is_contiguous(memory_format=CL)
            assert torch.equal(part, want), (begin, end)
            assert rel_err(s1, want.sum((2, 3, 4))) <= 1e-5 and rel_err(s2, want.square().sum((2, 3, 4))) <= 1e-5


@pytest.mark.parametrize("mode", list(MODES))
def test_dwconv_stats_writes_into_out(mode):
    """out= receives y in place (a dead activation reused): same values and statistics as a fresh y."""
    stride, transposed = MODES[mode]
    g = torch.Generator().manual_seed(len(mode))
    x = torch.randn(2, 20, 5, 6, 7, generator=g).contiguous(memory_format=CL)
    w, b = torch.randn(20, 1, 5, 5, 5, generator=g), torch.randn(20, generator=g)
    with torch.no_grad():
        fresh = cpp_ops.dwconv_stats(x, w, b, stride, transposed)
        buffer = torch.full_like(fresh[0], float("nan"))
        got = cpp_ops.dwconv_stats(x, w, b, stride, transposed, out=buffer)
    assert got[0].data_ptr() == buffer.data_ptr()
    for a, r in zip(got, fresh):
        assert torch.equal(a, r)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("k", [3, 5, 7])
def test_dwconv_stats_only(k, mode, threads):
    """stats_only=True gives no y and the same statistics as the full op (all planes and a plane range);
    C = 36 runs both the 16-channel kernels and a channel remainder."""
    stride, transposed = MODES[mode]
    g = torch.Generator().manual_seed(k * 7 + len(mode))
    x = torch.randn(2, 36, 6, 9, 13, generator=g).contiguous(memory_format=CL)
    w, b = torch.randn(36, 1, k, k, k, generator=g), torch.randn(36, generator=g)
    with torch.no_grad():
        depth = cpp_ops.dwconv_stats(x, w, b, stride, transposed)[0].shape[2]
        for planes in [None, (1, depth - 1)]:
            full = cpp_ops.dwconv_stats(x, w, b, stride, transposed, planes=planes)
            y, s1, s2 = cpp_ops.dwconv_stats(x, w, b, stride, transposed, planes=planes, stats_only=True)
            assert y is None
            assert torch.equal(s1, full[1]) and torch.equal(s2, full[2]), planes


def test_norm_mlp_count_matches_reference(threads):
    """y as one chunk of planes with the whole output's statistics and voxel count, as the up block runs."""
    g = torch.Generator().manual_seed(11)
    whole = torch.randn(2, 32, 9, 6, 7, generator=g)
    s1, s2 = whole.sum((2, 3, 4)), (whole * whole).sum((2, 3, 4))
    args = list(_mlp_args(2, 32, 2, 32, (9, 6, 7), 5, g))[3:]
    y = whole[:, :, 3:7]
    with torch.no_grad():
        got = cpp_ops.norm_mlp(y, s1, s2, *args, count=whole[0, 0].numel())
    ref = ops.norm_mlp(y, s1, s2, *args, count=whole[0, 0].numel())
    assert rel_err(got, ref) <= 1e-5


def test_dwconv_stats_only_takes_no_out():
    x = torch.randn(1, 16, 4, 5, 6).contiguous(memory_format=CL)
    with pytest.raises(ValueError, match="stats_only"), torch.no_grad():
        cpp_ops.dwconv_stats(x, torch.randn(16, 1, 3, 3, 3), None, out=torch.empty_like(x), stats_only=True)


@pytest.mark.parametrize("case,exc,match", [
    ("shape", ValueError, "out must be"), ("layout", RuntimeError, "channels_last_3d"),
    ("overlap", RuntimeError, "overlap"), ("dtype", TypeError, "float32")])
def test_dwconv_stats_rejects_bad_out(case, exc, match):
    x = torch.randn(1, 16, 4, 5, 6).contiguous(memory_format=CL)
    w = torch.randn(16, 1, 3, 3, 3)
    out = {"shape": torch.empty(1, 16, 4, 5, 7).contiguous(memory_format=CL),
           "layout": torch.empty(1, 16, 4, 5, 6),
           "overlap": x,
           "dtype": torch.empty(1, 16, 4, 5, 6, dtype=torch.float64).contiguous(memory_format=CL)}[case]
    with pytest.raises(exc, match=match), torch.no_grad():
        cpp_ops.dwconv_stats(x, w, None, out=out)


@pytest.mark.parametrize("planes", [(2, 2), (3, 1), (-1, 2), (0, 10)],
                         ids=["empty", "reversed", "negative", "past-end"])
def test_dwconv_stats_bad_plane_range(planes):
    x = torch.randn(1, 4, 9, 5, 5)
    with pytest.raises(ValueError, match="output planes"):
        cpp_ops.dwconv_stats(x, torch.randn(4, 1, 3, 3, 3), None, planes=planes)


def _mlp_args(n, c, r, c_out, spatial, w_dims, g):
    y = torch.randn(n, c, *spatial, generator=g) * 2 + 1
    _, s1, s2 = ops.dwconv_stats(y, torch.ones(c, 1, 1, 1, 1), None)
    tail = (1, 1, 1) if w_dims == 5 else ()
    return (y, s1, s2, torch.randn(c, generator=g), torch.randn(c, generator=g),
            torch.randn(r * c, c, *tail, generator=g) * c ** -0.5, torch.randn(r * c, generator=g),
            torch.randn(c_out, r * c, *tail, generator=g) * (r * c) ** -0.5, torch.randn(c_out, generator=g))


@pytest.mark.parametrize("fmt", ["ncdhw", "cl3d"])
@pytest.mark.parametrize("r", [2, 4])
@pytest.mark.parametrize("c,c_out,residual,w_dims", [(20, 20, True, 5), (33, 33, False, 2), (20, 40, True, 2),
                                                     (33, 16, False, 5)],
                         ids=["c20-res", "c33", "c20-to-40-res", "c33-to-16"])
def test_norm_mlp_matches_reference(c, c_out, residual, w_dims, r, fmt, threads):
    from mednext_fast import _C
    g = torch.Generator().manual_seed(c * r + c_out)
    spatial = (13, 12, 11)  # 1716 voxels: more than one tile per sample, the last one partial
    assert 13 * 12 * 11 > _C.norm_mlp_tile(r * c) or r * c < 100
    args = list(_mlp_args(2, c, r, c_out, spatial, w_dims, g))
    args[0] = layout(args[0], fmt)
    res = layout(torch.randn(2, c_out, *spatial, generator=g), fmt) if residual else None
    ref = ops.norm_mlp(*args, residual=res, eps=1e-5)
    with torch.no_grad():
        got = cpp_ops.norm_mlp(*args, residual=res, eps=1e-5)
    assert got.shape == ref.shape and got.dtype == torch.float32
    assert got.is_contiguous(memory_format=CL)
    assert rel_err(got, ref) <= 1e-4, rel_err(got, ref)


@pytest.mark.parametrize("c,r,c_out,residual", [(32, 2, 32, True), (16, 4, 64, False), (48, 2, 16, True),
                                                 (33, 2, 32, True)])
def test_norm_mlp_fused_and_gemm_paths(c, r, c_out, residual, threads):
    """Narrow layers (C_out in 16/32/64, R*C % 32 == 0) run the fused register-resident MLP; the ATen
    GEMM tiles (forced with _C.set_mlp_fused(False)) must give the same result."""
    from mednext_fast import _C
    g = torch.Generator().manual_seed(c + r + c_out)
    spatial = (9, 10, 13)  # 1170 voxels: several 512-voxel tasks, the last partial
    args = list(_mlp_args(2, c, r, c_out, spatial, 5, g))
    args[0] = args[0].contiguous(memory_format=CL)
    res = torch.randn(2, c_out, *spatial, generator=g).contiguous(memory_format=CL) if residual else None
    ref = ops.norm_mlp(*args, residual=res)
    fused = cpp_ops.norm_mlp(*args, residual=res)
    before = _C.set_mlp_fused(False)
    try:
        gemm = cpp_ops.norm_mlp(*args, residual=res)
    finally:
        _C.set_mlp_fused(before)
    assert rel_err(fused, ref) <= 1e-4 and rel_err(gemm, ref) <= 1e-4
    fused_expected = (r * c) % 32 == 0
    # different summation orders: bitwise equality would mean the same code ran twice
    assert torch.equal(fused, gemm) != fused_expected


def test_norm_mlp_multi_tile_boundaries():
    """Voxels on both sides of every tile boundary, in both samples, match the reference."""
    from mednext_fast import _C
    g = torch.Generator().manual_seed(11)
    c, r = 32, 4
    tile = _C.norm_mlp_tile(r * c)
    spatial = (3, 7, (2 * tile) // 21 + 5)  # > 2 tiles, partial last tile
    s = spatial[0] * spatial[1] * spatial[2]
    assert s > 2 * tile and s % tile != 0
    args = _mlp_args(2, c, r, c, spatial, 5, g)
    ref = ops.norm_mlp(*args).flatten(2)
    got = cpp_ops.norm_mlp(*args).flatten(2)
    idx = torch.tensor([0, tile - 1, tile, 2 * tile - 1, 2 * tile, s - 1])
    assert rel_err(got[..., idx], ref[..., idx]) <= 1e-4
    assert rel_err(got, ref) <= 1e-4


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_ops_under_grad_modes_with_two_threads(mode, threads):
    """Worker threads must run under the caller's mode (inference tensors refuse in-place updates otherwise)."""
    g = torch.Generator().manual_seed(2)
    args = _mlp_args(1, 16, 2, 16, (9, 10, 11), 5, g)
    x, w = torch.randn(1, 16, 9, 10, 11, generator=g), torch.randn(16, 1, 3, 3, 3, generator=g)
    ctx = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
    with ctx:
        out = cpp_ops.norm_mlp(*args, residual=args[0])
        y = cpp_ops.dwconv_stats(x, w, None)[0]
    assert rel_err(out, ops.norm_mlp(*args, residual=args[0])) <= 1e-4
    assert rel_err(y, ops.dwconv_stats(x, w, None)[0]) <= 1e-4


@pytest.mark.parametrize("spatial", [(4, 5, 6), (8, 8, 9)], ids=["voxels<hidden", "voxels>=hidden"])
def test_norm_mlp_both_norm_paths(spatial, threads):
    """Fewer voxels than hidden channels normalises y per tile; more folds the norm into w_expand."""
    g = torch.Generator().manual_seed(17)
    args = _mlp_args(2, 64, 4, 32, spatial, 5, g)  # hidden 256 vs 120 / 576 voxels
    res = torch.randn(2, 32, *spatial, generator=g)
    assert rel_err(cpp_ops.norm_mlp(*args, residual=res), ops.norm_mlp(*args, residual=res)) <= 1e-4


@pytest.mark.parametrize("spatial", [(1, 1, 1), (1, 3, 1), (2, 1, 5)])
def test_norm_mlp_degenerate_spatial(spatial):
    """Size-1 spatial dims (ambiguous strides for channels_last_3d) and a single voxel per sample."""
    g = torch.Generator().manual_seed(13)
    args = _mlp_args(3, 20, 2, 20, spatial, 5, g)
    res = torch.randn(3, 20, *spatial, generator=g)
    assert rel_err(cpp_ops.norm_mlp(*args, residual=res), ops.norm_mlp(*args, residual=res)) <= 1e-4


def _good_dw():
    return torch.randn(1, 4, 5, 5, 5), torch.randn(4, 1, 3, 3, 3), torch.randn(4)


@pytest.mark.parametrize("case,exc,match", [
    ("float64", TypeError, "float32"),
    ("bfloat16", TypeError, "float32"),
    ("meta device", RuntimeError, "CPU tensors only"),
    ("4-d input", ValueError, "5 dims"),
    ("even k", ValueError, "odd k"),
    ("k=9", ValueError, "odd k"),
    ("wrong channels", ValueError, "C=4"),
    ("bias shape", ValueError, "bias must be"),
    ("stride 3", ValueError, "stride must be 1 or 2"),
    ("requires grad", RuntimeError, "inference-only"),
])
def test_dwconv_stats_bad_inputs(case, exc, match):
    x, w, b = _good_dw()
    kw = {}
    if case == "float64":
        x = x.double()
    elif case == "bfloat16":
        w = w.bfloat16()
    elif case == "meta device":
        x = x.to("meta")
    elif case == "4-d input":
        x = x[0]
    elif case == "even k":
        w = torch.randn(4, 1, 4, 4, 4)
    elif case == "k=9":
        w = torch.randn(4, 1, 9, 9, 9)
    elif case == "wrong channels":
        w = torch.randn(5, 1, 3, 3, 3)
    elif case == "bias shape":
        b = torch.randn(5)
    elif case == "stride 3":
        kw["stride"] = 3
    elif case == "requires grad":
        w.requires_grad_(True)
    with pytest.raises(exc, match=match):
        cpp_ops.dwconv_stats(x, w, b, **kw)


def test_requires_grad_is_fine_without_grad_mode():
    x, w, b = _good_dw()
    w.requires_grad_(True)
    with torch.no_grad():
        y, s1, _ = cpp_ops.dwconv_stats(x, w, b)
    assert not y.requires_grad
    with torch.inference_mode():
        y2, _, _ = cpp_ops.dwconv_stats(x, w, b)
    assert torch.equal(y, y2)


def test_non_contiguous_input_matches_reference():
    g = torch.Generator().manual_seed(5)
    big = torch.randn(2, 8, 6, 7, 16, generator=g)
    x = big[:, :, 1:, :, ::2]  # strided view
    w = torch.randn(8, 1, 3, 3, 3, generator=g)
    ref = ops.dwconv_stats(x, w, None)
    got = cpp_ops.dwconv_stats(x, w, None)
    assert all(rel_err(a, r) <= 1e-4 for a, r in zip(got, ref))


@pytest.mark.parametrize("case,exc,match", [
    ("float64 y", TypeError, "float32"),
    ("s1 shape", ValueError, "s1 must be"),
    ("w_expand shape", ValueError, "w_expand must be"),
    ("w_compress shape", ValueError, "w_compress must be"),
    ("residual shape", ValueError, "residual must be"),
    ("meta device", RuntimeError, "CPU tensors only"),
    ("requires grad", RuntimeError, "inference-only"),
])
def test_norm_mlp_bad_inputs(case, exc, match):
    args = list(_mlp_args(1, 4, 2, 4, (3, 3, 3), 5, torch.Generator().manual_seed(0)))
    res = None
    if case == "float64 y":
        args[0] = args[0].double()
    elif case == "s1 shape":
        args[1] = args[1][:, :3]
    elif case == "w_expand shape":
        args[5] = torch.randn(8, 4, 3, 1, 1)
    elif case == "w_compress shape":
        args[7] = torch.randn(4, 7)
    elif case == "residual shape":
        res = torch.randn(1, 4, 3, 3, 2)
    elif case == "meta device":
        args[3] = args[3].to("meta")
    elif case == "requires grad":
        args[5].requires_grad_(True)
    with pytest.raises(exc, match=match):
        cpp_ops.norm_mlp(*args, residual=res)


def test_extension_checks_without_the_python_wrapper():
    """The C++ side checks too: calling _C directly with bad input raises instead of crashing."""
    from mednext_fast import _C
    x, w, b = _good_dw()
    with pytest.raises(RuntimeError, match="float32"):
        _C.dwconv_stats(x.double(), w, b, 1, False)
    with pytest.raises(RuntimeError, match="kernel size"):
        _C.dwconv_stats(x, torch.randn(4, 1, 2, 2, 2), b, 1, False)
    with pytest.raises(RuntimeError, match="stats_only"):
        _C.dwconv_stats(x, w, b, 1, False, out=torch.empty_like(x, memory_format=CL), stats_only=True)
    args = list(_mlp_args(1, 4, 2, 4, (3, 3, 3), 5, torch.Generator().manual_seed(0)))
    args[6] = torch.randn(3)
    with pytest.raises(RuntimeError, match="b_expand"):
        _C.norm_mlp(*args, None, 1e-5)


@pytest.mark.parametrize("fused", [True, False], ids=["fused-mlp", "gemm-tiles"])
@pytest.mark.parametrize("target", ["y", "residual"])
def test_norm_mlp_out_may_be_y_or_the_residual(target, fused, threads):
    """out=y or out=residual writes the result over that buffer: the same values as a fresh output."""
    from mednext_fast import _C
    g = torch.Generator().manual_seed(7)
    args = list(_mlp_args(2, 32, 2, 32, (9, 10, 13), 5, g))
    args[0] = args[0].contiguous(memory_format=CL)
    res = torch.randn(2, 32, 9, 10, 13, generator=g).contiguous(memory_format=CL)
    before = _C.set_mlp_fused(fused)
    try:
        with torch.no_grad():
            want = cpp_ops.norm_mlp(*args, residual=res)
            buffer = (args[0] if target == "y" else res).clone()
            if target == "y":
                args[0] = buffer
            got = cpp_ops.norm_mlp(*args, residual=buffer if target == "residual" else res, out=buffer)
    finally:
        _C.set_mlp_fused(before)
    assert got.data_ptr() == buffer.data_ptr()
    assert rel_err(got, want) <= 1e-6


@pytest.mark.parametrize("case,exc,match", [
    ("shape", ValueError, "out must be"),
    ("ncdhw", ValueError, "channels_last_3d"),
    ("partial overlap", RuntimeError, "must not otherwise overlap"),
])
def test_norm_mlp_rejects_bad_out(case, exc, match):
    args = list(_mlp_args(1, 4, 2, 4, (3, 3, 4), 5, torch.Generator().manual_seed(0)))
    args[0] = args[0].contiguous(memory_format=CL)
    if case == "shape":
        out = torch.empty(1, 4, 3, 3, 3).contiguous(memory_format=CL)
    elif case == "ncdhw":
        out = torch.empty(1, 4, 3, 3, 4)
    else:  # y and out in one buffer, out one voxel further on: it overlaps y without being y
        flat = torch.empty(144 + 4)
        strides = (144, 1, 48, 16, 4)  # channels_last_3d of (1, 4, 3, 3, 4)
        y = flat.as_strided((1, 4, 3, 3, 4), strides, 0)
        y.copy_(args[0])
        args[0], out = y, flat.as_strided((1, 4, 3, 3, 4), strides, 4)
    with pytest.raises(exc, match=match), torch.no_grad():
        cpp_ops.norm_mlp(*args, out=out)


needs_native_bf16 = pytest.mark.skipif(not (OK and cpp_ops.native_bf16()),
                                       reason="this CPU has no native bf16 (AVX512-BF16 / AMX)")


@needs_native_bf16
@pytest.mark.parametrize("c,r,spatial,residual", [(128, 2, (9, 10, 13), True), (64, 8, (5, 6, 7), False),
                                                  (256, 2, (4, 3, 5), True)], ids=["c128", "c64-r8", "c256"])
def test_norm_mlp_bf16_gemms_err_like_pytorch_autocast(c, r, spatial, residual, threads):
    """Wide layers with bf16 GEMMs: fp32 output, error against the fp64 reference no larger than that of
    the PyTorch reference under CPU autocast (bf16 1x1x1 convolutions)."""
    g = torch.Generator().manual_seed(c + r)
    args = list(_mlp_args(2, c, r, c, spatial, 5, g))
    args[0] = args[0].contiguous(memory_format=CL)
    res = torch.randn(2, c, *spatial, generator=g).contiguous(memory_format=CL) if residual else None
    exact = ops.norm_mlp(*[a.double() for a in args], residual=None if res is None else res.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast_err = (ops.norm_mlp(*args, residual=res).double() - exact).abs().max()
    with torch.no_grad():
        fp32 = cpp_ops.norm_mlp(*args, residual=res)
        bf16 = cpp_ops.norm_mlp(*args, residual=res, bf16_gemms=True)
        with cpp_ops.gemms_in_bf16():
            from_context = cpp_ops.norm_mlp(*args, residual=res)
    assert bf16.dtype == torch.float32 and bf16.is_contiguous(memory_format=CL)
    bf16_err = (bf16.double() - exact).abs().max()
    assert bf16_err <= autocast_err
    assert bf16_err > 10 * (fp32.double() - exact).abs().max()  # the GEMMs did run in bf16
    assert torch.equal(from_context, bf16)


@needs_native_bf16
@pytest.mark.parametrize("c,uses_bf16", [(32, False), (64, True)])
def test_norm_mlp_bf16_gemms_leave_32_channel_layers_on_the_fused_fp32_kernel(c, uses_bf16):
    """C_out <= 32 keeps the fused fp32 MLP (faster than bf16 GEMM tiles there); from 64 on bf16 tiles win."""
    g = torch.Generator().manual_seed(5)
    args = list(_mlp_args(1, c, 2, c, (6, 7, 8), 5, g))
    args[0] = args[0].contiguous(memory_format=CL)
    with torch.no_grad():
        assert torch.equal(cpp_ops.norm_mlp(*args, bf16_gemms=True), cpp_ops.norm_mlp(*args)) != uses_bf16
