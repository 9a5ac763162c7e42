"""Fused Triton kernels of the MedNeXt block (``mednext_fast.kernels``).

* ``dwconv_stats``: depthwise conv3d (stride 1, stride 2, stride-2 transposed) + per-(sample, channel) sum and
  sum of squares.
* ``norm_mlp``: GroupNorm-apply + 1x1x1 expansion + GELU + 1x1x1 compression + residual, hidden kept on chip.

Both follow the contract of ``mednext_fast.ops``. Importing this package is cheap and never imports triton;
the op modules import it (and fail with a clear ImportError if it is missing).
"""
from __future__ import annotations

import importlib.util
import os


def interpreter_on() -> bool:
    """True when the Triton interpreter is requested (kernels then run on CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def available(device: str | None = None) -> tuple[bool, str]:
    """Whether the Triton kernels can run: returns (ok, reason).

    ``device`` ('cuda' or 'cpu') narrows the question; None asks whether they can run anywhere here.
    CUDA tensors need a GPU; CPU tensors need ``TRITON_INTERPRET=1`` set before triton is imported.
    """
    if importlib.util.find_spec("triton") is None:
        return False, "triton is not installed (pip install 'triton>=3.6')"
    try:
        import triton  # noqa: F401
    except Exception as err:  # a broken install must not break callers that only probe
        return False, f"triton cannot be imported ({type(err).__name__}: {err})"
    import torch

    cuda = torch.cuda.is_available()
    interp = interpreter_on()
    if device is None:
        if cuda:
            return True, "CUDA"
        if interp:
            return True, "Triton interpreter (TRITON_INTERPRET=1) on CPU tensors"
        return False, "no CUDA device, and TRITON_INTERPRET=1 is not set for the CPU interpreter"
    kind = str(device).split(":")[0]
    if kind == "cuda":
        return (True, "CUDA") if cuda else (False, "no CUDA device is available")
    if kind == "cpu":
        if interp:
            return True, "Triton interpreter (TRITON_INTERPRET=1) on CPU tensors"
        return False, "CPU tensors need TRITON_INTERPRET=1 (the Triton interpreter); use backend='cpp' or 'torch'"
    return False, f"unsupported device type {kind!r}"


__all__ = ["available", "interpreter_on"]
