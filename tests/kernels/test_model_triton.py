"""The whole model on backend='triton' (every block fused) equals the torch backend: outputs and gradients."""
import torch

import mednext_fast as mf
from tests.conftest import tiny_mednext


def test_tiny_model_outputs_and_every_gradient_match_torch_backend():
    ref = tiny_mednext(deep_supervision=True, backend="torch")
    fused = tiny_mednext(deep_supervision=True, backend="torch")
    fused.load_state_dict(ref.state_dict())
    mf.set_backend(fused, "triton")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ref.to(device)
    fused.to(device)
    x = torch.randn(2, 1, 32, 32, 32, device=device)  # 32^3: the bottleneck keeps 2^3 voxels per channel
    weights = None
    grads = []
    for model in (ref, fused):
        outs = model(x)
        weights = weights or [torch.randn_like(o) for o in outs]
        sum((o * w).sum() for o, w in zip(outs, weights)).backward()
        grads.append([o.detach() for o in outs])
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(fused.named_parameters(), ref.parameters()):
        if q.grad is None:
            assert p.grad is None, name
            continue
        if name.endswith("conv1.bias"):
            # Exact gradient 0 (per-channel GroupNorm cancels the conv bias): both hold rounding noise.
            scale = dict(ref.named_parameters())[name[:-4] + "weight"].grad.abs().max()
            assert p.grad.abs().max() < 1e-4 * scale, name
            continue
        assert (p.grad - q.grad).norm() <= 5e-4 * q.grad.norm(), name


def test_checkpointing_on_top_of_the_triton_backend():
    plain = tiny_mednext(backend="torch")
    ckpt = tiny_mednext(backend="torch", checkpoint_style="outside_block")
    ckpt.load_state_dict(plain.state_dict())
    mf.set_backend(plain, "triton")
    mf.set_backend(ckpt, "triton")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.randn(1, 1, 32, 32, 32, device=device)
    outs = []
    for model in (plain.to(device), ckpt.to(device)):
        out = model(x)
        (out * torch.linspace(-1, 1, out.numel(), device=device).view_as(out)).sum().backward()
        outs.append(out.detach())
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(ckpt.named_parameters(), plain.parameters()):
        if q.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=name)
