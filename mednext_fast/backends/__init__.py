"""Backends: which implementation runs a MedNeXt forward, decided once per forward.

* ``torch``  - the reference module path (any device, any config, autograd).
* ``triton`` - fused Triton kernels (``mednext_fast.kernels``) on CUDA tensors, forward and backward
  (``backends/triton.py``).
* ``cpp``    - fused C++ kernels (``mednext_fast._C``) on CPU tensors, inference only: when autograd needs
  gradients the forward runs the ``torch`` path instead (``backends/cpp.py``).
* ``auto``   - ``triton`` for CUDA inputs, ``cpp`` for float32 CPU inputs, each when available and able to
  run the call (``cpp`` not when gradients are needed); ``torch`` otherwise.

A fused backend is a ``Backend``: its two ops (contract and reference in ``mednext_fast/ops.py``), what it
can run, and optionally its own way of running a whole model (``run_model``); without one the model runs
its plain module forward with the backend's ops in every block. Blocks the fused ops cannot run (2-D,
GRN, layer norm) use the reference path; ``MedNeXt.set_backend`` refuses them for an explicit backend,
``accelerate`` keeps them on PyTorch with a warning. When a forward needs gradients, an inference-only
backend leaves the whole forward to the reference path.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

BACKENDS = ("auto", "torch", "triton", "cpp")
AUTO = {"cuda": "triton", "cpu": "cpp"}  # the backend 'auto' tries for each device type


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here; the message says what is missing."""


@dataclass(frozen=True)
class Backend:
    """A fused implementation of the MedNeXt block ops and what it can run."""

    name: str
    ops: Any  # has dwconv_stats and norm_mlp with the signatures of mednext_fast.ops
    devices: tuple  # device types of the tensors it runs on
    dtypes: tuple  # activation dtypes its ops take
    autograd: bool  # its ops are differentiable, so it can train
    wrong_device: str  # the error for an input on another device; {device} is replaced by its type
    # run_model(model, x): a whole MedNeXt forward run the backend's own way; None: the plain module forward.
    run_model: Optional[Callable] = None

    @property
    def inference_only(self) -> bool:
        return not self.autograd

    def check_device(self, x: torch.Tensor) -> None:
        if x.device.type not in self.devices:
            raise RuntimeError(self.wrong_device.format(device=x.device.type))

    def check_dtype(self, x: torch.Tensor) -> None:
        if x.dtype not in self.dtypes:
            names = ", ".join(str(d).replace("torch.", "") for d in self.dtypes)
            fix = "convert the input (x.float())"
            if not torch.is_autocast_enabled(x.device.type):
                fix += " or run under torch.autocast for mixed precision"
            raise TypeError(f"backend={self.name!r} runs {names} inputs, got {x.dtype}; {fix}")


# name -> module with load() -> Backend (raising BackendUnavailable). Tests may swap entries.
_LOADERS = {"triton": "mednext_fast.backends.triton", "cpp": "mednext_fast.backends.cpp"}
# Plain dicts rather than functools caches: under torch.compile a lookup is a constant, not a traced load.
_LOADED: dict = {}
_AVAILABLE: dict = {}


def load(name: str) -> Backend:
    """The fused backend ``name``; BackendUnavailable (naming what to install or build) if it cannot run."""
    backend = _LOADED.get(name)
    if backend is None:
        loader = _LOADERS[name]
        backend = importlib.import_module(loader).load() if isinstance(loader, str) else loader()
        _LOADED[name] = backend
    return backend


def is_available(name: str) -> bool:
    if name == "torch":
        return True
    ok = _AVAILABLE.get(name)
    if ok is None:
        try:
            load(name)
            ok = True
        except BackendUnavailable:
            ok = False
        _AVAILABLE[name] = ok
    return ok


def clear_cache() -> None:
    """Forget which backends loaded (after installing one, or in tests that swap loaders)."""
    _LOADED.clear()
    _AVAILABLE.clear()


def check_name(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    return name


def _fusable_blocks(module: torch.nn.Module) -> list:
    return [m for m in module.modules() if hasattr(m, "fusable") and m.fusable() is None]


def needs_grad(module: torch.nn.Module, x: torch.Tensor) -> bool:
    """Autograd would record this forward: grad mode is on and the input or a parameter requires grad.

    The official state_dict's ``dummy_tensor`` takes no part in the forward and does not count.
    """
    if not torch.is_grad_enabled():
        return False
    return x.requires_grad or any(p.requires_grad for name, p in module.named_parameters() if name != "dummy_tensor")


def select(module: torch.nn.Module, x: torch.Tensor) -> Optional[Backend]:
    """The backend to run ``module`` (a MedNeXt or one block, with a ``backend`` name) on ``x``, or None
    for the reference path. The caller decides once and runs every block with the answer."""
    name = module.backend
    if name == "torch":
        return None
    if name == "auto":
        name = AUTO.get(x.device.type)
        if name is None or x.shape[0] == 0 or not is_available(name) or not _fusable_blocks(module):
            return None
        backend = load(name)
        if x.dtype not in backend.dtypes or (backend.inference_only and needs_grad(module, x)):
            return None
        return backend
    backend = load(name)
    backend.check_device(x)
    if x.shape[0] == 0:
        return None  # an empty batch: the reference path returns empty outputs, the same on every backend
    if (backend.inference_only and needs_grad(module, x)) or not _fusable_blocks(module):
        return None  # training runs the reference path; so does a model none of whose blocks it can run
    backend.check_dtype(x)
    return backend


def ops_for(module: torch.nn.Module, x: torch.Tensor):
    """The fused ops to run ``module`` on ``x`` with, or None for the reference path."""
    backend = select(module, x)
    return None if backend is None else backend.ops


def validate(blocks, name: str) -> None:
    """Raise now, not at the first forward, if an explicit backend cannot run these (name, block) pairs."""
    check_name(name)
    if name in ("auto", "torch"):
        return
    load(name)
    bad = [(block_name, why) for block_name, block in blocks if (why := block.fusable()) is not None]
    if bad:
        listed = "; ".join(f"{n}: {why}" for n, why in bad[:5])
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise ValueError(f"backend={name!r} cannot run {len(bad)} block(s): {listed}{more}. "
                         "Use backend='auto' to run those on PyTorch.")
