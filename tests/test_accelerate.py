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
