"""accelerate(): existing MedNeXt instances switch to the fused path with the same parameters and results."""
import copy
import types

import pytest
import torch

import mednext_fast as mf
from mednext_fast import backends, ops
from tests.conftest import fake_backend, tiny_mednext

monai_nets = pytest.importorskip("monai.networks.nets", reason="monai is a test dependency")


@pytest.fixture
def reference_ops_as_triton(monkeypatch):
    """Route backend='triton' to the reference ops so the wiring is tested independently of the kernels."""
    calls = []

    def norm_mlp(*args, **kwargs):
        calls.append(1)
        return ops.norm_mlp(*args, **kwargs)

    fake = types.SimpleNamespace(dwconv_stats=ops.dwconv_stats, norm_mlp=norm_mlp)
    monkeypatch.setitem(backends._LOADERS, "triton", lambda: fake_backend(fake))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    backends.clear_cache()
    yield calls
    backends.clear_cache()


def tiny_monai(**overrides):
    config = dict(spatial_dims=3, init_filters=4, in_channels=1, out_channels=2, encoder_expansion_ratio=2,
                  decoder_expansion_ratio=2, bottleneck_expansion_ratio=2, kernel_size=3, deep_supervision=True,
                  use_residual_connection=True, blocks_down=(1, 1, 1, 1), blocks_bottleneck=1, blocks_up=(1, 1, 1, 1))
    config.update(overrides)
    return monai_nets.MedNeXt(**config)


def _run(model, x):
    outs = model(x)
    outs = [outs] if isinstance(outs, torch.Tensor) else list(outs)
    sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outs).backward()
    return [o.detach() for o in outs]


def test_monai_model_keeps_parameters_outputs_and_gradients(reference_ops_as_triton):
    model = tiny_monai().train()
    before = copy.deepcopy(model)
    params_before = [id(p) for p in model.parameters()]
    keys_before = list(model.state_dict())
    optimizer = torch.optim.AdamW(model.parameters())
    assert mf.accelerate(model, "triton") is model
    assert [id(p) for p in model.parameters()] == params_before
    assert list(model.state_dict()) == keys_before
    assert all(isinstance(b, mf.MedNeXtBlock) for b in model.enc_stages[0])
    x = torch.randn(2, 1, 32, 32, 32)
    ref_out, out = _run(before, x), _run(model, x)
    assert len(reference_ops_as_triton) == 17  # 9 stage blocks, 4 down and 4 up blocks all fused
    for a, b in zip(ref_out, out):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    for (name, p), q in zip(model.named_parameters(), before.parameters()):
        if name.endswith("conv1.bias"):
            continue  # exact gradient 0 (GroupNorm cancels it): both hold rounding noise only
        assert (p.grad - q.grad).norm() <= 1e-4 * q.grad.norm() + 1e-8, name
    optimizer.step()  # the optimizer still drives the same parameters


def test_our_model_falls_back_per_block_with_one_warning(reference_ops_as_triton):
    model = tiny_mednext(grn=True, backend="torch")
    expected = r"accelerate: 16 block\(s\) stay on PyTorch: enc_block_0.0: grn=True"
    with pytest.warns(UserWarning, match=expected) as record:
        mf.accelerate(model, "triton")
    assert len(record) == 1
    assert model.down_0.backend == "triton" and model.enc_block_0[0].backend == "torch"


def test_monai_grn_blocks_stay_untouched(reference_ops_as_triton):
    model = tiny_monai(global_resp_norm=True)
    with pytest.warns(UserWarning, match="grn=True is not fused"):
        mf.accelerate(model, "triton")
    assert type(model.enc_stages[0][0]).__module__.startswith("monai")
    assert isinstance(model.down_blocks[0], mf.MedNeXtDownBlock)  # MONAI gives down blocks no GRN


def test_unknown_backend_raises():
    with pytest.raises(ValueError, match="backend must be one of"):
        mf.accelerate(tiny_mednext(), "cuda")


# -- blocks that look like MedNeXt blocks but are not: they keep their module and their output -------------
class LookAlike(torch.nn.Module):
    """A block with MedNeXt's sub-module names, built the way a user might build a variant of it."""

    def __init__(self, channels=4, act=None, norm_groups=None, do_res=True, eps=1e-5, conv2_bias=True):
        super().__init__()
        c = channels
        self.conv1 = torch.nn.Conv3d(c, c, 3, padding=1, groups=c)
        self.norm = torch.nn.GroupNorm(norm_groups or c, c, eps=eps)
        self.conv2 = torch.nn.Conv3d(c, 2 * c, 1, bias=conv2_bias)
        self.act = torch.nn.GELU() if act is None else act
        self.conv3 = torch.nn.Conv3d(2 * c, c, 1)
        if do_res is not None:
            self.do_res = do_res

    def forward(self, x):
        out = self.conv3(self.act(self.conv2(self.norm(self.conv1(x)))))
        return out + x if getattr(self, "do_res", True) else out


class ScaledResidual(LookAlike):
    """Same sub-modules as ours, another forward: only the probe can tell."""

    def forward(self, x):
        return super().forward(x) + 0.5 * x


def _look_alike_model(bad):
    model = torch.nn.Sequential(LookAlike(), bad, LookAlike())
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.5)
    return model


COUNTER_EXAMPLES = {
    "relu": (lambda: LookAlike(act=torch.nn.ReLU()), r"1: its activation is ReLU, not the exact GELU"),
    "tanh_gelu": (lambda: LookAlike(act=torch.nn.GELU(approximate="tanh")),
                  r"1: its activation is GELU\(approximate='tanh'\)"),
    "groupnorm_2_groups": (lambda: LookAlike(norm_groups=2),
                           r"1: its GroupNorm has 2 group\(s\) over 4 channels; the fused block needs one group"),
    "no_do_res": (lambda: LookAlike(do_res=None), r"1: it has no do_res attribute"),
    "int_do_res": (lambda: LookAlike(do_res=1), r"1: do_res is 1, not a bool"),
    "conv2_without_bias": (lambda: LookAlike(conv2_bias=False), r"1: conv2 has no bias"),
    "other_forward": (ScaledResidual, r"1: its forward computes something else than the MedNeXt block"),
}


@pytest.mark.parametrize("case", sorted(COUNTER_EXAMPLES))
def test_look_alike_blocks_keep_their_module_and_output(reference_ops_as_triton, case):
    make, reason = COUNTER_EXAMPLES[case]
    model = _look_alike_model(make())
    bad = model[1]
    cls, children = type(bad), dict(bad.named_children())
    x = torch.randn(2, 4, 8, 8, 8)
    with torch.no_grad():
        before = bad(x)
    with pytest.warns(UserWarning, match=rf"accelerate: 1 block\(s\) stay on PyTorch: {reason}") as record:
        mf.accelerate(model, "triton")
    assert len(record) == 1
    assert model[1] is bad and type(bad) is cls and dict(bad.named_children()) == children
    assert isinstance(model[0], mf.MedNeXtBlock) and isinstance(model[2], mf.MedNeXtBlock)
    with torch.no_grad():
        assert torch.equal(bad(x), before)
        model(x)
    assert len(reference_ops_as_triton) == 2  # the two true look-alikes ran fused, the kept one did not


def test_warning_lists_every_kept_block_once(reference_ops_as_triton):
    model = torch.nn.Sequential(LookAlike(act=torch.nn.ReLU()), LookAlike(), LookAlike(norm_groups=1))
    with pytest.warns(UserWarning) as record:
        mf.accelerate(model, "triton")
    assert len(record) == 1
    message = str(record[0].message)
    assert message.startswith("accelerate: 2 block(s) stay on PyTorch: 0: its activation is ReLU")
    assert "; 2: its GroupNorm has 1 group(s) over 4 channels" in message and "(left as LookAlike)" in message


def test_monai_model_with_look_alike_blocks_keeps_them_and_its_output():
    model = tiny_monai().eval()
    model.enc_stages[0][0].act = torch.nn.ReLU()
    channels = model.dec_stages[0][0].conv1.in_channels
    model.dec_stages[0][0].norm = torch.nn.GroupNorm(2, channels)
    model.bottleneck[0] = LookAlike(channels=64, do_res=None)  # a user's block without do_res
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        before = model(x)
    with pytest.warns(UserWarning, match=r"3 block\(s\) stay on PyTorch") as record:
        mf.accelerate(model, "torch")
    message = str(record[0].message)
    for name, reason in (("enc_stages.0.0", "activation is ReLU"), ("bottleneck.0", "no do_res attribute"),
                         ("dec_stages.0.0", "GroupNorm has 2 group(s)")):
        assert f"{name}: its {reason}" in message or f"{name}: it has {reason}" in message, name
    assert type(model.enc_stages[0][0]).__module__.startswith("monai") and type(model.bottleneck[0]) is LookAlike
    assert type(model.dec_stages[0][0]).__module__.startswith("monai")
    assert isinstance(model.enc_stages[1][0], mf.MedNeXtBlock) and isinstance(model.up_blocks[0], mf.MedNeXtUpBlock)
    with torch.no_grad():
        for a, b in zip(before, model(x)):
            assert torch.equal(a, b)  # re-classed blocks on PyTorch compute bit for bit what MONAI's did


def test_block_eps_is_passed_to_the_fused_op(reference_ops_as_triton):
    block = LookAlike(eps=0.5)
    x = torch.randn(2, 4, 8, 8, 8)
    with torch.no_grad():
        before = block(x)
        model = mf.accelerate(torch.nn.Sequential(block), "triton")
        assert isinstance(model[0], mf.MedNeXtBlock) and model[0].mlp_params()["eps"] == 0.5
        torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)
    assert len(reference_ops_as_triton) == 1


def test_conv1_without_bias_is_fused(reference_ops_as_triton):
    block = LookAlike()
    block.conv1 = torch.nn.Conv3d(4, 4, 3, padding=1, groups=4, bias=False)
    model = mf.accelerate(torch.nn.Sequential(block), "triton")
    assert isinstance(model[0], mf.MedNeXtBlock)


@pytest.mark.parametrize("conv1,reason", [
    (torch.nn.Conv3d(4, 4, 3, padding=2, groups=4), r"conv1.padding is \(2, 2, 2\), the fused block needs \(1, 1, 1\)"),
    (torch.nn.Conv3d(4, 4, 3, padding=2, dilation=2, groups=4), r"conv1.padding is \(2, 2, 2\)"),
    (torch.nn.Conv3d(4, 4, 3, padding=1, groups=2), r"conv1.groups is 2, the fused block needs 4"),
    (torch.nn.Conv3d(4, 4, 9, padding=4, groups=4), r"conv1.kernel_size is \(9, 9, 9\); the fused ops take"),
    (torch.nn.Conv3d(4, 4, (3, 3, 1), padding=(1, 1, 0), groups=4), r"conv1.kernel_size is \(3, 3, 1\)"),
    (torch.nn.Conv3d(4, 4, 3, padding=1, groups=4, padding_mode="reflect"), r"conv1.padding_mode is 'reflect'"),
])
def test_conv1_other_than_ours_is_kept(reference_ops_as_triton, conv1, reason):
    block = LookAlike()
    block.conv1 = conv1
    with pytest.warns(UserWarning, match=reason):
        model = mf.accelerate(torch.nn.Sequential(block), "triton")
    assert model[0] is block


def test_blocks_with_hooks_or_extra_parameters_are_kept(reference_ops_as_triton):
    hooked, extra = LookAlike(), LookAlike()
    hooked.register_forward_hook(lambda module, args, out: out * 2)
    extra.scale = torch.nn.Parameter(torch.ones(1))
    model = torch.nn.Sequential(hooked, extra)
    with pytest.warns(UserWarning, match=r"0: it has hooks.*1: it has sub-modules or tensors .* \(scale\)"):
        mf.accelerate(model, "triton")
    assert model[0] is hooked and model[1] is extra
    assert list(model.state_dict()) == [f"{i}.{k}" for i in (0, 1) for k in model[i].state_dict()]


def test_resampling_blocks_with_another_res_conv_or_flags_are_kept(reference_ops_as_triton):
    model = tiny_monai()
    down, up, other = model.down_blocks[0], model.up_blocks[-1], model.down_blocks[1]
    down.res_conv = torch.nn.Conv3d(down.conv1.in_channels, down.conv3.out_channels, 1, stride=2, bias=False)
    up.resample_do_res = 1
    other.do_res = True
    with pytest.warns(UserWarning) as record:
        mf.accelerate(model, "triton")
    message = str(record[0].message)
    assert "down_blocks.0: res_conv has no bias" in message
    assert "down_blocks.1: a resampling block with do_res=True" in message
    assert f"up_blocks.{len(model.up_blocks) - 1}: a resampling block needs a bool resample_do_res" in message
    assert model.down_blocks[0] is down and model.up_blocks[-1] is up and model.down_blocks[1] is other
    assert isinstance(model.down_blocks[2], mf.MedNeXtDownBlock) and isinstance(model.up_blocks[0], mf.MedNeXtUpBlock)


@pytest.mark.parametrize("edit, reason", [
    (lambda b: setattr(b, "act", torch.nn.ReLU()), "not the exact GELU"),
    (lambda b: setattr(b, "act", torch.nn.GELU(approximate="tanh")), "not the exact GELU"),
    (lambda b: setattr(b, "norm", torch.nn.GroupNorm(2, b.norm.num_channels)), "one group per channel"),
])
def test_edited_own_blocks_stay_on_pytorch_with_their_output(reference_ops_as_triton, edit, reason):
    torch.manual_seed(0)
    model = tiny_mednext(backend="torch")
    edit(model.enc_block_1[0])
    x = torch.randn(2, 1, 32, 32, 32)
    with torch.no_grad():
        expected = model(x)
    with pytest.warns(UserWarning, match=f"enc_block_1.0: .*{reason}"):
        mf.accelerate(model, "triton")
    assert model.enc_block_1[0].backend == "torch" and model.enc_block_0[0].backend == "triton"
    with torch.no_grad():
        got = model(x)
    for a, b in zip(got if isinstance(got, list) else [got], expected if isinstance(expected, list) else [expected]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
