import importlib.util
import os

import pytest
import torch

# Triton picks its interpreter when the kernels are decorated, i.e. at import: set it before any test
# module can import mednext_fast.kernels (tests then run the Triton kernels on CPU tensors).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Triton's own @jit helpers (tl.zeros, ...) bind to the interpreter when triton is first imported; import it
# now, while the setting holds, since some tests hide TRITON_INTERPRET to check the backend's error.
if importlib.util.find_spec("triton") is not None:
    try:
        import triton.language  # noqa: F401
    except Exception:  # a broken install is reported by the backend tests themselves
        pass


# fp32 comparisons need a true fp32 reference: on Ampere and later cuDNN convolutions default to TF32
# (about 1e-4 relative error, seen on an H200), which the fused kernels' IEEE fp32 arithmetic does not share.
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_mednext(**overrides):
    """The smallest MedNeXt that still has every block type: 4 channels, one block per stage."""
    from mednext_fast import MedNeXt
    config = dict(in_channels=1, n_channels=4, n_classes=3, exp_r=2, kernel_size=3, do_res=True,
                  do_res_up_down=True, block_counts=[1] * 9)
    config.update(overrides)
    return MedNeXt(**config)


def fake_backend(ops, name="triton"):
    """A differentiable Backend on every device that runs ``ops`` (e.g. the reference ops): tests the wiring
    around a backend independently of its kernels. Install it with ``monkeypatch.setitem(backends._LOADERS,
    name, lambda: fake_backend(ops))`` and ``backends.clear_cache()``."""
    from mednext_fast.backends import Backend
    return Backend(name=name, ops=ops, devices=("cpu", "cuda"), dtypes=(torch.float32, torch.float16, torch.bfloat16),
                   autograd=True, wrong_device="fake backend: unexpected device {device}")
