"""backend='triton': the fused Triton ops (``mednext_fast.kernels``) on CUDA tensors, forward and backward.

The model runs its plain module forward with these ops in every block (``run_model`` is None); a
whole-model runner (CUDA-graph capture, fused glue between blocks) would be set here.
"""
from __future__ import annotations

import types

import torch

from . import Backend, BackendUnavailable

WRONG_DEVICE = ("backend='triton' needs CUDA tensors, got a {device} input; use backend='cpp' or 'torch' on CPU "
                "(tests may set TRITON_INTERPRET=1)")


def load() -> Backend:
    try:
        from mednext_fast import kernels
    except ImportError as err:  # pragma: no cover - the folder ships with the package
        raise BackendUnavailable(f"backend='triton': mednext_fast.kernels cannot be imported ({err})")
    ok, why = kernels.available()
    if not ok:
        raise BackendUnavailable(f"backend='triton' is not available: {why}")
    from mednext_fast.kernels import dwconv_stats, norm_mlp

    # CPU tensors run in the Triton interpreter, for tests.
    devices = ("cuda", "cpu") if kernels.interpreter_on() else ("cuda",)
    ops = types.SimpleNamespace(dwconv_stats=dwconv_stats.dwconv_stats, norm_mlp=norm_mlp.norm_mlp)
    return Backend(name="triton", ops=ops, devices=devices, dtypes=(torch.float32, torch.float16, torch.bfloat16),
                   autograd=True, wrong_device=WRONG_DEVICE)

