"""Backend dispatch: which implementation runs each MedNeXt block.

* ``torch``  - the reference nn.Module path (any device, any config, autograd).
* ``triton`` - fused Triton kernels (``mednext_fast.kernels``) on CUDA tensors, forward and backward.
* ``cpp``    - fused C++ kernels (``mednext_fast._C`` via ``cpp_ops``) on CPU tensors, inference only:
  when autograd needs gradients the block runs the ``torch`` path instead.
* ``auto``   - decided per call: ``triton`` for CUDA inputs, ``cpp`` for fp32 CPU inputs without
  autograd, each when available, else ``torch``.

A fused backend runs every block (stride 1, down, up) through two ops (``ops.py`` is their reference);
under ``auto``, configurations the fused ops cannot run (2-D, GRN, layer norm) use the ``torch`` path.
"""
from __future__ import annotations

import functools
import os
import types

import torch

BACKENDS = ("auto", "torch", "triton", "cpp")


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here; the message says what is missing."""


def _load_triton():
    try:
        from mednext_fast import kernels
    except ImportError as err:  # pragma: no cover - the folder ships with the package
        raise BackendUnavailable(f"backend='triton': mednext_fast.kernels cannot be imported ({err})")
    ok, why = kernels.available()
    if not ok:
        raise BackendUnavailable(f"backend='triton' is not available: {why}")
    from mednext_fast.kernels.dwconv_stats import dwconv_stats
    from mednext_fast.kernels.norm_mlp import norm_mlp
    return types.SimpleNamespace(name="triton", dwconv_stats=dwconv_stats, norm_mlp=norm_mlp)


def _load_cpp():
    try:
        from . import cpp_ops
    except ImportError as err:
        raise BackendUnavailable(
            f"backend='cpp' is not available: the C++ extension is not built ({err}); "
            "build it with `pip install --no-build-isolation -e .`")
    ok, why = cpp_ops.available()
    if not ok:
        raise BackendUnavailable(f"backend='cpp' is not available: {why}")
    # inference_only: no autograd graph holds the ops' inputs, so blocks may let them overwrite buffers.
    return types.SimpleNamespace(name="cpp", dwconv_stats=cpp_ops.dwconv_stats, norm_mlp=cpp_ops.norm_mlp,
                                 inference_only=True)


_LOADERS = {"triton": _load_triton, "cpp": _load_cpp}


def reuses_buffers(ops) -> bool:
    """True for an inference-only backend's ops: callers may hand them buffers to overwrite."""
    return ops is not None and getattr(ops, "inference_only", False)


@functools.lru_cache(maxsize=None)
def load_ops(name: str):
    """The (dwconv_stats, norm_mlp) namespace of a fused backend; BackendUnavailable if it cannot run."""
    return _LOADERS[name]()


@functools.lru_cache(maxsize=None)
def is_available(name: str) -> bool:
    if name == "torch":
        return True
    try:
        load_ops(name)
    except BackendUnavailable:
        return False
    return True


def clear_cache() -> None:
    """Forget which backends loaded (after installing one, or in tests that swap loaders)."""
    load_ops.cache_clear()
    is_available.cache_clear()


def check_name(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    return name


def _needs_grad(block, x: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in block.parameters()))


def _triton_device_ok(x: torch.Tensor) -> bool:
    return x.is_cuda or (x.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1")


def ops_for(block, x: torch.Tensor):
    """The fused ops to run ``block`` on ``x`` with, or None for the torch path."""
    name = block.backend
    if name == "torch":
        return None
    if name == "auto":
        if block.fusable() is not None:
            return None
        if x.is_cuda and is_available("triton"):
            name = "triton"
        elif (x.device.type == "cpu" and x.dtype == torch.float32 and is_available("cpp")
              and not _needs_grad(block, x)):
            name = "cpp"
        else:
            return None
    elif name == "triton" and not _triton_device_ok(x):
        raise RuntimeError(f"backend='triton' needs CUDA tensors, got a {x.device.type} input; use "
                           "backend='cpp' or 'torch' on CPU (tests may set TRITON_INTERPRET=1)")
    elif name == "cpp":
        if x.device.type != "cpu":
            raise RuntimeError(f"backend='cpp' runs on CPU tensors, got a {x.device.type} input; "
                               "use backend='triton' or 'torch' on GPUs")
        if _needs_grad(block, x):
            return None  # the C++ kernels are inference-only; training runs the reference path
    return load_ops(name)


def cpp_under_cpu_autocast(block, x: torch.Tensor) -> bool:
    """CPU autocast is on and the cpp backend would run ``block`` on ``x``. The fused C++ ops are fp32:
    the model then runs with autocast off, norm_mlp's wide GEMMs in bf16 when autocast asks for bf16."""
    if x.device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
        return False
    ops = ops_for(block, x)
    return getattr(ops, "name", None) == "cpp"


def validate(blocks, name: str) -> None:
    """Raise now, not at the first forward, if an explicit backend cannot run these blocks."""
    check_name(name)
    if name in ("auto", "torch"):
        return
    load_ops(name)
    bad = [(block_name, why) for block_name, block in blocks if (why := block.fusable()) is not None]
    if bad:
        listed = "; ".join(f"{n}: {why}" for n, why in bad[:5])
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise ValueError(f"backend={name!r} cannot run {len(bad)} block(s): {listed}{more}. "
                         "Use backend='auto' to run those on PyTorch.")
