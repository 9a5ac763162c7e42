"""Gradient checkpointing ('outside_block', non-reentrant) changes memory, not results."""
import warnings

import torch

import mednext_fast as mf
from tests.conftest import tiny_mednext


def _outputs_and_grads(model, x):
    outs = model(x)
    loss = sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outs)
    loss.backward()
    return [o.detach() for o in outs], {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_checkpointing_gives_same_outputs_and_gradients_without_warnings():
    plain = tiny_mednext(deep_supervision=True)
    ckpt = tiny_mednext(deep_supervision=True, checkpoint_style="outside_block")
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 1, 32, 32, 16)
    ref_out, ref_grads = _outputs_and_grads(plain, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, grads = _outputs_and_grads(ckpt, x.clone().requires_grad_(False))
    for a, b in zip(ref_out, out):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert set(ref_grads) == set(grads) and "dummy_tensor" not in grads
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-5, atol=1e-6, msg=name)


def test_m_and_l_checkpoint_by_default_and_every_config_can():
    assert mf.create_mednext("M", 1, 2).outside_block_checkpointing
    assert not mf.create_mednext("S", 1, 2).outside_block_checkpointing
    assert mf.create_mednext("S", 1, 2, checkpoint_style="outside_block").outside_block_checkpointing
