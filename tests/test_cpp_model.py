"""The whole model on backend='cpp' (inference) equals backend='torch'."""
import pytest
import torch

import mednext_fast as mf
from mednext_fast import backends
from mednext_fast.backends import cpp

pytestmark = pytest.mark.skipif(not backends.is_available("cpp"), reason="the C++ extension is not built")


@pytest.mark.parametrize("variant,kernel", [("S", 3), ("S", 5), ("B", 3), ("B", 5)])
def test_paper_models_match_torch_backend(variant, kernel):
    ref = mf.create_mednext(variant, 1, 3, kernel_size=kernel, deep_supervision=True, backend="torch").eval()
    fused = mf.create_mednext(variant, 1, 3, kernel_size=kernel, deep_supervision=True, backend="cpp").eval()
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        expected, got = ref(x), fused(x)
    for a, b in zip(expected, got):
        assert (a - b).abs().max() <= 1e-4 * a.abs().max()


def test_cpp_backend_trains_on_the_torch_path():
    model = mf.create_mednext("S", 1, 2, backend="cpp")
    out = model(torch.randn(1, 1, 32, 32, 32))
    out.sum().backward()  # would fail if the inference-only kernels had run
    assert model.enc_block_0[0].conv1.weight.grad is not None


def test_auto_picks_cpp_for_cpu_inference():
    model = mf.create_mednext("S", 1, 2).eval()
    calls = []
    original = cpp.norm_mlp
    cpp.norm_mlp = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        with torch.inference_mode():
            model(torch.randn(1, 1, 32, 32, 32))
    finally:
        cpp.norm_mlp = original
    # every stage and down block of S; an up block calls it once per chunk of planes (one at 32^3)
    assert len(calls) == 2 * 9 + 8


@pytest.mark.parametrize("kernel,do_res,m", [(3, True, (5, 6, 7)), (5, False, (4, 4, 4)), (7, True, (3, 5, 4))])
def test_up_block_adds_into_the_skip_chunk_by_chunk(kernel, do_res, m, monkeypatch):
    """The cpp inference run of an up block (residual and front pad written straight into the skip,
    depthwise output in chunks of planes) equals skip + block(x) on the torch path."""
    torch.manual_seed(kernel)
    up = mf.MedNeXtUpBlock(12, 6, exp_r=2, kernel_size=kernel, do_res=do_res).eval()
    x = torch.randn(2, 12, *m).contiguous(memory_format=torch.channels_last_3d)
    skip = torch.randn(2, 6, *(2 * n for n in m))
    with torch.no_grad():
        want = skip + up(x)
        monkeypatch.setattr(cpp, "UP_CHUNK_BYTES", 1)  # chunks of (thread count) planes: several chunks
        buffer = skip.clone()
        got = cpp._up_into(up, x, buffer)
    assert got.data_ptr() == buffer.data_ptr()
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()


def test_inference_leaves_the_input_untouched():
    model = mf.create_mednext("S", 1, 3, kernel_size=3, backend="cpp").eval()
    x = torch.randn(1, 1, 32, 32, 32)
    before = x.clone()
    with torch.inference_mode():
        model(x)
    assert torch.equal(x, before)


@pytest.mark.parametrize("backend", ["cpp", "auto"])
def test_cpu_autocast_runs_the_fused_path_in_fp32_with_bf16_gemms(backend):
    """Under CPU autocast the cpp path turns autocast off (its ops are fp32), returns fp32, and runs the
    wide layers' GEMMs in bf16 where the CPU has it natively: error below PyTorch's own autocast run."""
    torch.manual_seed(0)
    ref = mf.create_mednext("S", 1, 3, backend="torch").eval()
    fused = mf.create_mednext("S", 1, 3, backend=backend).eval()
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.inference_mode():
        exact = ref.double()(x.double())
        ref.float()
        fp32 = fused(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = fused(x)
            autocast_out = ref(x)
    assert mixed.dtype == torch.float32 and autocast_out.dtype == torch.bfloat16
    if cpp.native_bf16():
        err = (mixed.double() - exact).abs().max()
        assert 10 * (fp32.double() - exact).abs().max() < err <= (autocast_out.double() - exact).abs().max()
    else:
        assert torch.equal(mixed, fp32)  # bf16 GEMMs do not pay without native bf16: all fp32


def test_multi_channel_input_through_the_channels_last_stem():
    """Inference on the cpp path computes the 1x1x1 stem as a per-voxel linear map straight into
    channels-last; with several input channels it must still equal the torch backend."""
    torch.manual_seed(3)
    ref = mf.create_mednext("S", 3, 4, backend="torch").eval()
    fused = mf.create_mednext("S", 3, 4, backend="cpp").eval()
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 16, 32, 48)
    with torch.inference_mode():
        expected, got = ref(x), fused(x)
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_stage_blocks_reuse_the_previous_input_for_their_depthwise_output():
    """On the cpp path every stage block after the first writes its depthwise output into the input of
    the block before it (dead by then) instead of a new tensor; the result is unchanged."""
    torch.manual_seed(1)
    ref = mf.create_mednext("S", 1, 2, backend="torch").eval()
    model = mf.create_mednext("S", 1, 2, backend="cpp").eval()
    model.load_state_dict(ref.state_dict())
    original, reused = cpp.dwconv_stats, []
    cpp.dwconv_stats = lambda *a, **k: reused.append(k.get("out") is not None) or original(*a, **k)
    x = torch.randn(1, 1, 32, 32, 32)
    try:
        with torch.inference_mode():
            got = model(x)
            expected = ref(x)
    finally:
        cpp.dwconv_stats = original
    assert sum(reused) == 9  # S: 9 stages of 2 blocks, the second of each reuses
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_frozen_model_in_grad_mode_still_runs_the_fused_ops():
    """Nothing requires grad (the unused official dummy_tensor aside): the forward records no graph, so the
    inference-only kernels run even though grad mode is on."""
    model = mf.create_mednext("S", 1, 2, backend="cpp").eval()
    for p in model.parameters():
        p.requires_grad_(p is model.dummy_tensor)
    calls = []
    original = cpp.norm_mlp
    cpp.norm_mlp = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        out = model(torch.randn(1, 1, 32, 32, 32))
    finally:
        cpp.norm_mlp = original
    assert calls and not out.requires_grad


def test_explicit_cpp_trains_other_dtypes_on_the_torch_path():
    """Training a float64 model with backend='cpp' runs the reference path (no dtype error from the
    inference-only backend); inference in float64 names the fix."""
    model = mf.create_mednext("S", 1, 2, backend="cpp").double()
    x = torch.randn(1, 1, 32, 32, 32, dtype=torch.float64)
    model(x).sum().backward()
    with torch.no_grad(), pytest.raises(TypeError, match=r"float32 inputs, got torch.float64.*x.float\(\)"):
        model(x)


def test_accelerate_cpp_on_a_model_without_fusable_blocks_runs_pytorch():
    """A 2-D MedNeXt has no block the fused ops can run: accelerate warns, and inference stays on PyTorch."""
    ref = mf.MedNeXt(1, 4, 2, exp_r=2, kernel_size=3, dim="2d", block_counts=[1] * 9, backend="torch").eval()
    model = mf.MedNeXt(1, 4, 2, exp_r=2, kernel_size=3, dim="2d", block_counts=[1] * 9, backend="torch").eval()
    model.load_state_dict(ref.state_dict())
    with pytest.warns(UserWarning, match="3-D only"):
        mf.accelerate(model, "cpp")
    x = torch.randn(2, 1, 32, 48)
    with torch.inference_mode():
        assert torch.equal(model(x), ref(x))
