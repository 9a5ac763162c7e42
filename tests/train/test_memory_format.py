"""CPU training keeps the model and its batches in channels_last_3d (train/device.memory_format): the layout
must change the speed only, never the loss or a gradient."""
import torch

from mednext_fast.train.device import memory_format
from mednext_fast.train.presets import PRESETS, build_model


def _loss_and_grads(layout):
    torch.manual_seed(0)
    cfg = dict(variant="S", in_channels=1, n_classes=3, kernel=3, deep_supervision=True,
               model=PRESETS["tiny"]["model"])
    model = build_model(cfg, "torch").to(memory_format=layout).train()
    x = torch.randn(2, 1, 32, 48, 32, generator=torch.Generator().manual_seed(1)).contiguous(memory_format=layout)
    loss = sum((o.float() ** 2).mean() * (i + 1) for i, o in enumerate(model(x)))
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_cpu_trains_in_channels_last_3d():
    assert memory_format(torch.device("cpu")) is torch.channels_last_3d
    assert memory_format(torch.device("cuda")) is torch.contiguous_format


def test_channels_last_3d_gives_the_ncdhw_loss_and_gradients():
    ref_loss, ref = _loss_and_grads(torch.contiguous_format)
    loss, grads = _loss_and_grads(torch.channels_last_3d)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == ref.keys() and len(ref) > 20
    for name, r in ref.items():
        # fp32 sums over ~1e5 voxels in another order: differences ~1e-5 of a gradient's largest entry
        scale = max(1.0, float(r.abs().max()))
        torch.testing.assert_close(grads[name], r, rtol=1e-3, atol=2e-4 * scale, msg=name)
