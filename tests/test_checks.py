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
