"""CPU training's speed settings (train/device.py): the model and its batches in channels_last_3d, which must
change the speed only, never the loss or a gradient; glibc keeping freed memory, unless the user chose."""
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


def _keep_freed_memory_in_subprocess(env_extra):
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(env_extra)
    code = "from mednext_fast.train.device import keep_freed_memory; print(keep_freed_memory())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_keep_freed_memory_applies_on_glibc_unless_the_user_chose():
    import platform
    import sys
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        assert _keep_freed_memory_in_subprocess({}) == "False"
        return
    assert _keep_freed_memory_in_subprocess({}) == "True"
    assert _keep_freed_memory_in_subprocess({"MALLOC_MMAP_MAX_": "65536"}) == "False"
    assert _keep_freed_memory_in_subprocess({"MALLOC_TRIM_THRESHOLD_": "1000"}) == "False"
