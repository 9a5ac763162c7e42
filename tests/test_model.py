"""The model against the official facts: parameter and key counts, layout, up-block padding, DS, 2-D."""
import pytest
import torch
import torch.nn.functional as F

import mednext_fast as mf
from tests.conftest import tiny_mednext

# Official parameter counts (in_channels=1, n_classes=13), from the official code (reference table).
OFFICIAL_PARAMS = {
    ("S", 3): (5_551_278, 5_563_810), ("S", 5): (5_980_910, 5_993_442),
    ("B", 3): (10_526_670, 10_539_202), ("B", 5): (10_956_302, 10_968_834),
    ("M", 3): (17_549_326, 17_561_858), ("M", 5): (18_261_198, 18_273_730),
    ("L", 3): (61_779_630, 61_792_162), ("L", 5): (62_993_262, 63_005_794),
}
KEYS_WITH_DS = {"S": 237, "B": 237, "M": 365, "L": 525}


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("variant,kernel", sorted(OFFICIAL_PARAMS))
def test_parameter_and_key_counts_match_official(variant, kernel):
    plain = mf.create_mednext(variant, 1, 13, kernel_size=kernel)
    ds = mf.create_mednext(variant, 1, 13, kernel_size=kernel, deep_supervision=True)
    assert (n_params(plain), n_params(ds)) == OFFICIAL_PARAMS[(variant, kernel)]
    assert len(ds.state_dict()) == KEYS_WITH_DS[variant]
    assert len(plain.state_dict()) == KEYS_WITH_DS[variant] - 8  # out_1..out_4 weight and bias


def test_state_dict_layout_and_order():
    model = mf.create_mednext("S", 1, 13, kernel_size=3, deep_supervision=True)
    state = model.state_dict()
    keys = list(state)
    assert keys[:3] == ["dummy_tensor", "stem.weight", "stem.bias"]
    tops = []
    for key in keys:
        top = key.split(".")[0]
        if top not in tops:
            tops.append(top)
    assert tops == ["dummy_tensor", "stem", "enc_block_0", "down_0", "enc_block_1", "down_1", "enc_block_2",
                    "down_2", "enc_block_3", "down_3", "bottleneck", "up_3", "dec_block_3", "up_2", "dec_block_2",
                    "up_1", "dec_block_1", "up_0", "dec_block_0", "out_0", "out_1", "out_2", "out_3", "out_4"]
    assert [k for k in keys if k.startswith("down_0.")] == [
        f"down_0.{m}.{p}" for m in ("conv1", "norm", "conv2", "conv3", "res_conv") for p in ("weight", "bias")]
    shapes = {
        "enc_block_0.0.conv1.weight": (32, 1, 3, 3, 3),
        "down_0.res_conv.weight": (64, 32, 1, 1, 1),      # Conv3d layout (out, in)
        "up_3.res_conv.weight": (512, 256, 1, 1, 1),      # ConvTranspose3d layout (in, out)
        "up_3.conv1.weight": (512, 1, 3, 3, 3),
        "out_0.conv_out.weight": (32, 13, 1, 1, 1),       # ConvTranspose3d head
        "out_4.conv_out.weight": (512, 13, 1, 1, 1),
        "dummy_tensor": (1,),
    }
    for key, shape in shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert state["dummy_tensor"].item() == 1.0


def test_down_block_takes_next_stage_expansion_ratio():
    model = mf.create_mednext("B", 1, 2)  # exp_r 2,3,4,...: down_0 uses 3 (official), 2 (MONAI)
    assert model.down_0.conv2.out_channels == 3 * 32
    assert model.down_1.conv2.out_channels == 4 * 64
    monai_like = mf.create_mednext("B", 1, 2, monai_compat=True)
    assert monai_like.down_0.conv2.out_channels == 2 * 32
    assert monai_like.down_1.conv2.out_channels == 3 * 64


def test_grn_is_not_given_to_down_0():
    model = tiny_mednext(grn=True)
    assert not model.down_0.grn
    assert all(getattr(model, f"down_{i}").grn for i in (1, 2, 3))
    assert model.enc_block_0[0].grn and model.up_0.grn
    assert "enc_block_0.0.grn_beta" in model.state_dict()
    keys = [k for k in model.state_dict() if k.startswith("up_0.")]
    assert keys[:2] == ["up_0.grn_beta", "up_0.grn_gamma"]  # direct parameters come first, as official


@pytest.mark.parametrize("kernel", [3, 5, 7])
def test_up_block_matches_manual_official_computation(kernel):
    block = mf.MedNeXtUpBlock(6, 3, exp_r=2, kernel_size=kernel, do_res=True)
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 6, 4, 5, 3)
    out = block(x)
    assert out.shape == (2, 3, 8, 10, 6)  # front pad of 2m-1
    y = F.conv_transpose3d(x, block.conv1.weight, block.conv1.bias, stride=2, padding=kernel // 2, groups=6)
    assert y.shape[2:] == (7, 9, 5)
    # GroupNorm statistics over the un-padded (2m-1) volume only.
    mean = y.mean(dim=(2, 3, 4), keepdim=True)
    var = y.var(dim=(2, 3, 4), unbiased=False, keepdim=True)
    z = (y - mean) / torch.sqrt(var + 1e-5) * block.norm.weight.view(1, -1, 1, 1, 1) \
        + block.norm.bias.view(1, -1, 1, 1, 1)
    main = block.conv3(F.gelu(block.conv2(z)))
    expected = F.pad(main + block.res_conv(x), (1, 0, 1, 0, 1, 0))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert out[:, :, 0].abs().max() == 0 and out[:, :, :, 0].abs().max() == 0 and out[..., 0].abs().max() == 0


def test_down_block_output_size_is_ceil_half():
    block = mf.MedNeXtDownBlock(4, 8, exp_r=2, kernel_size=5, do_res=True)
    assert block(torch.randn(2, 4, 7, 8, 9)).shape == (2, 8, 4, 4, 5)


@pytest.mark.parametrize("training", [True, False])
def test_deep_supervision_returns_five_outputs_in_train_and_eval(training):
    model = tiny_mednext(deep_supervision=True).train(training)
    with torch.no_grad():
        outs = model(torch.randn(2, 1, 32, 16, 48))
    assert isinstance(outs, list)
    assert [tuple(o.shape) for o in outs] == [(2, 3, 32 // s, 16 // s, 48 // s) for s in (1, 2, 4, 8, 16)]
    model.do_ds = False
    with torch.no_grad():
        assert model(torch.randn(1, 1, 32, 32, 32)).shape == (1, 3, 32, 32, 32)


def test_separate_encoder_and_decoder_kernels():
    model = tiny_mednext(kernel_size=None, enc_kernel_size=3, dec_kernel_size=5)
    assert model.enc_block_0[0].conv1.kernel_size == (3, 3, 3)
    assert model.down_3.conv1.kernel_size == (3, 3, 3)
    assert model.bottleneck[0].conv1.kernel_size == (5, 5, 5)
    assert model.up_0.conv1.kernel_size == (5, 5, 5)


def test_2d_model_runs_forward_and_backward():
    model = tiny_mednext(dim="2d", deep_supervision=True)
    outs = model(torch.randn(2, 1, 32, 48))
    assert [tuple(o.shape) for o in outs] == [(2, 3, 32 // s, 48 // s) for s in (1, 2, 4, 8, 16)]
    sum(o.sum() for o in outs).backward()
    assert model.stem.weight.grad is not None


def test_layer_norm_variant_runs():
    model = tiny_mednext(norm_type="layer")
    assert model(torch.randn(1, 1, 16, 16, 16)).shape == (1, 3, 16, 16, 16)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="checkpoint_style"):
        tiny_mednext(checkpoint_style="inside_block")
    with pytest.raises(ValueError, match="norm_type"):
        tiny_mednext(norm_type="batch")
    with pytest.raises(ValueError, match="9 entries"):
        tiny_mednext(block_counts=[1] * 5)
    with pytest.raises(ValueError, match="variant"):
        mf.create_mednext("XL", 1, 2)
    with pytest.raises(ValueError, match="kernel_size"):
        mf.create_mednext("S", 1, 2, kernel_size=4)


def test_autocast_bf16_runs_and_stays_close_to_fp32():
    model = tiny_mednext(deep_supervision=True)
    x = torch.randn(2, 1, 32, 32, 32)
    ref = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outs = model(x)
    assert outs[0].dtype == torch.bfloat16
    sum(o.float().sum() for o in outs).backward()
    assert model.stem.weight.grad.dtype == torch.float32  # fp32 master weights
    for a, b in zip(ref, outs):
        assert (a - b.float()).abs().max() <= 0.05 * a.abs().max() + 0.05


@pytest.mark.parametrize("kwargs,name,value", [
    (dict(kernel_size=4), "kernel_size", "4"),
    (dict(kernel_size=8), "kernel_size", "8"),
    (dict(kernel_size=0), "kernel_size", "0"),
    (dict(kernel_size=3.0), "kernel_size", "3.0"),
    (dict(kernel_size=None, enc_kernel_size=6, dec_kernel_size=3), "enc_kernel_size", "6"),
    (dict(kernel_size=None, enc_kernel_size=3, dec_kernel_size=2), "dec_kernel_size", "2"),
])
def test_even_or_non_integer_kernel_sizes_are_refused_at_construction(kwargs, name, value):
    with pytest.raises(ValueError, match=rf"{name} must be an odd positive int .* got {value}; use"):
        tiny_mednext(**kwargs)


def test_kernel_size_4_message_suggests_the_odd_neighbours():
    with pytest.raises(ValueError, match="even kernel changes the spatial size.*got 4; use 3 or 5"):
        tiny_mednext(kernel_size=4)


def test_odd_kernel_above_7_runs_on_the_torch_path_and_auto_falls_back():
    ref = tiny_mednext(kernel_size=9, backend="torch")
    model = tiny_mednext(kernel_size=None, enc_kernel_size=9, dec_kernel_size=9, backend="auto")
    model.load_state_dict(ref.state_dict())
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))
    ref(x).sum().backward()


@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_fused_backends_refuse_kernels_above_7_at_construction(backend):
    from mednext_fast import backends
    if not backends.is_available(backend):
        pytest.skip(f"backend {backend!r} is not available here")
    with pytest.raises(ValueError, match=rf"backend='{backend}' cannot run .*only odd kernel sizes up to 7.*'auto'"):
        tiny_mednext(kernel_size=9, backend=backend)


def test_paper_variants_name_their_kernel_sizes_and_the_way_to_others():
    with pytest.raises(ValueError, match=r"one of \(3, 5, 7\) \(the paper's variants\), got 9; .*MedNeXt"):
        mf.create_mednext("S", 1, 2, kernel_size=9)
