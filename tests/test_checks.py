"""Every bad input raises an error that names the problem."""
import pytest
import torch

from tests.conftest import tiny_mednext


@pytest.fixture(scope="module")
def model():
    return tiny_mednext()


def test_wrong_rank(model):
    with pytest.raises(ValueError, match=r"5-D input \(N, C, D, H, W\), got shape \(1, 16, 16, 16\)"):
        model(torch.randn(1, 16, 16, 16))


def test_wrong_rank_2d():
    with pytest.raises(ValueError, match="4-D input"):
        tiny_mednext(dim="2d")(torch.randn(1, 1, 16, 16, 16))


def test_integer_dtype(model):
    with pytest.raises(TypeError, match="floating-point input, got torch.int64"):
        model(torch.zeros(1, 1, 16, 16, 16, dtype=torch.long))


def test_channel_count(model):
    with pytest.raises(ValueError, match="built for 1 input channel.*got 2"):
        model(torch.randn(1, 2, 16, 16, 16))


def test_spatial_size_not_divisible_by_16_names_axis_and_sizes(model):
    with pytest.raises(ValueError, match=r"H=40 is not divisible by 16.*32 or 48"):
        model(torch.randn(1, 1, 16, 40, 16))
    with pytest.raises(ValueError, match=r"W=8 is not divisible by 16.*pad it to 16"):
        model(torch.randn(1, 1, 16, 16, 8))


def test_input_on_other_device_than_parameters(model):
    with pytest.raises(RuntimeError, match="input is on meta but the model's parameters are on cpu"):
        model(torch.empty(1, 1, 16, 16, 16, device="meta"))


def test_do_ds_without_heads(model):
    model.do_ds = True
    try:
        with pytest.raises(RuntimeError, match="deep_supervision"):
            model(torch.randn(1, 1, 16, 16, 16))
    finally:
        model.do_ds = False


def test_not_a_tensor(model):
    with pytest.raises(TypeError, match="torch.Tensor"):
        model([[1.0]])


# -- dtype of the input against the weights -----------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_input_dtype_other_than_the_weights_names_both_and_the_fix(model, dtype):
    name = str(dtype).replace("torch.", "")
    expected = (rf"input dtype {name} differs from the model's weights \(float32\); convert the input "
                rf"\(x.to\(torch.float32\)\), convert the model \(model.to\(torch.{name}\)\), or run under "
                r"torch.autocast")
    with pytest.raises(TypeError, match=expected):
        model(torch.randn(1, 1, 32, 32, 32).to(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_input_dtype_check_is_off_under_autocast(dtype):
    model = tiny_mednext(backend="torch")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(1, 1, 32, 32, 32, dtype=dtype))
    assert out.dtype == torch.bfloat16


def test_input_dtype_equal_to_low_precision_weights_runs():
    model = tiny_mednext(backend="torch").to(torch.bfloat16)
    with torch.no_grad():
        assert model(torch.randn(1, 1, 32, 32, 32, dtype=torch.bfloat16)).dtype == torch.bfloat16


# -- the smallest input training can take -------------------------------------------------------------------
@pytest.mark.parametrize("batch", [1, 2])
def test_training_input_with_a_one_voxel_bottleneck_names_the_minimum(batch):
    model = tiny_mednext().train()
    expected = (r"input spatial size 16x16x16 is too small to train MedNeXt: its 1/16 bottleneck is 1x1x1 "
                r".*minimum training input is 32 along one axis \(16x16x32")
    with pytest.raises(ValueError, match=expected):
        model(torch.randn(batch, 1, 16, 16, 16))


def test_training_at_the_minimum_size_runs_forward_and_backward():
    model = tiny_mednext().train()
    model(torch.randn(1, 1, 16, 16, 32)).sum().backward()
    assert model.stem.weight.grad is not None


def test_small_inputs_are_not_refused_outside_training():
    model = tiny_mednext(backend="torch")
    model.eval()(torch.randn(2, 1, 16, 16, 16)).sum().backward()  # eval mode, with grad: as before
    with torch.no_grad():
        model.train()(torch.randn(2, 1, 16, 16, 16))  # train mode without grad: as before
    tiny_mednext(norm_type="layer").train()(torch.randn(1, 1, 16, 16, 16)).sum().backward()  # no GroupNorm


# -- an empty batch: empty outputs on every backend --------------------------------------------------------
def _raise(*args, **kwargs):
    raise AssertionError("a fused op ran on an empty batch")


@pytest.fixture
def triton_as_fake(monkeypatch):
    """backend='triton' whose ops fail if called: an empty batch must not reach them."""
    import types

    from mednext_fast import backends
    from tests.conftest import fake_backend
    ops = types.SimpleNamespace(dwconv_stats=_raise, norm_mlp=_raise)
    monkeypatch.setitem(backends._LOADERS, "triton", lambda: fake_backend(ops))
    backends.clear_cache()
    yield
    backends.clear_cache()


def _check_empty_batch(backend, grad):
    model = tiny_mednext(backend="torch", deep_supervision=True)
    model.set_backend(backend)
    x = torch.randn(0, 1, 32, 32, 32, requires_grad=grad)
    with torch.set_grad_enabled(grad):
        outs = model(x)
        assert [tuple(o.shape) for o in outs] == [(0, 3, 32 // s, 32 // s, 32 // s) for s in (1, 2, 4, 8, 16)]
        assert all(o.dtype == torch.float32 for o in outs)
        if grad:
            sum(o.sum() for o in outs).backward()
            assert x.grad.shape == x.shape


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("backend", ["torch", "cpp", "auto"])
def test_empty_batch_gives_empty_outputs_on_every_backend(backend, grad):
    from mednext_fast import backends
    if backend == "cpp" and not backends.is_available("cpp"):
        pytest.skip("the C++ extension is not built")
    _check_empty_batch(backend, grad)


@pytest.mark.parametrize("grad", [False, True])
def test_empty_batch_never_reaches_the_fused_ops(triton_as_fake, grad):
    _check_empty_batch("triton", grad)


def test_empty_batch_on_the_triton_interpreter():
    from mednext_fast import backends
    backends.clear_cache()
    if not backends.is_available("triton"):
        pytest.skip("Triton (or its interpreter) is not available")
    _check_empty_batch("triton", False)


def test_trainable_size_helper_matches_the_check():
    from mednext_fast.checks import trainable_size
    assert not trainable_size((16, 16, 16)) and not trainable_size((16, 16))
    assert trainable_size((16, 16, 32)) and trainable_size((32, 16)) and trainable_size((32, 32, 32))
