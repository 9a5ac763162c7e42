"""The fused C++ CPU inference ops (``mednext_fast._C``) behind ``backend='cpp'``.

Same signatures and semantics as the references in ``mednext_fast.ops`` (fp32, 3-D). Inputs may be
NCDHW or channels_last_3d; outputs are logical NCDHW tensors in channels_last_3d memory format (keep
the model in channels_last_3d to avoid layout copies). Inference only: these ops record no autograd
graph, so calling them on tensors that require grad while grad mode is on is an error (the 'cpp'
backend runs the PyTorch path for training instead). Threads follow ``torch.get_num_threads()``.
"""
from __future__ import annotations

import contextlib
import contextvars
import os

import torch

BUILD_COMMAND = "pip install --no-build-isolation -e ."

try:
    from . import _C
    _IMPORT_ERROR = None
except ImportError as err:  # not built, or built against another torch
    _C = None
    _IMPORT_ERROR = err


def available() -> tuple[bool, str]:
    """(True, ISA the conv kernel uses) if the extension is built, else (False, how to build it)."""
    if _C is None:
        note = os.path.join(os.path.dirname(__file__), "_C_build_error.txt")
        failed = ""
        if os.path.exists(note):
            with open(note) as f:
                failed = f"; the last build failed: {f.read().strip()}"
        return False, (f"the C++ extension mednext_fast._C is not built ({_IMPORT_ERROR}{failed}); build it from "
                       f"the repository root with `{BUILD_COMMAND}` (needs a C++17 compiler with OpenMP)")
    return True, f"mednext_fast._C loaded (conv kernel ISA: {_C.isa()})"


_GEMMS_IN_BF16 = contextvars.ContextVar("mednext_fast_cpp_gemms_in_bf16", default=False)


def native_bf16() -> bool:
    """True if this CPU multiplies bf16 matrices natively (AVX512-BF16 / AMX), where bf16 GEMMs pay."""
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


@contextlib.contextmanager
def gemms_in_bf16(enabled: bool = True):
    """Within the block, ``norm_mlp`` calls that do not say otherwise run their wide-layer GEMMs in bf16
    (the model enters this under CPU autocast with bf16; see ``MedNeXt.forward``)."""
    token = _GEMMS_IN_BF16.set(bool(enabled))
    try:
        yield
    finally:
        _GEMMS_IN_BF16.reset(token)


def _require_built():
    if _C is None:
        raise RuntimeError(available()[1])
    return _C


def _check(name: str, t, dims: tuple[int, ...] | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"cpp_ops: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise RuntimeError(f"cpp_ops: {name} is on {t.device}; the C++ ops run on CPU tensors only "
                           "(use backend='triton' or 'torch' on GPUs)")
    if t.dtype != torch.float32:
        raise TypeError(f"cpp_ops: {name} must be float32, got {t.dtype}")
    if dims is not None and t.dim() not in dims:
        raise ValueError(f"cpp_ops: {name} must have {' or '.join(map(str, dims))} dims, got shape {tuple(t.shape)}")


def _check_no_grad(*tensors) -> None:
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        raise RuntimeError("cpp_ops: the C++ ops are inference-only (no autograd); call them under "
                           "torch.no_grad() / torch.inference_mode(), or use backend='torch' to train")


def dwconv_stats(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 stride: int = 1, transposed: bool = False, planes: tuple[int, int] | None = None,
                 out: torch.Tensor | None = None, stats_only: bool = False):
    """Depthwise conv3d (padding k//2) + per-(n, c) sum and sum of squares; see ``ops.dwconv_stats``.

    stride 1 keeps the size, stride 2 gives ceil(n/2), transposed=True (stride 2) gives 2n-1.
    Returns (y, s1, s2): y (N, C, D', H', W') channels_last_3d, s1/s2 fp32 (N, C).
    planes=(begin, end) computes only output D-planes [begin, end): y holds those planes and s1/s2 sum
    over them (a large output computed piece by piece). ``out`` (channels_last_3d-contiguous, y's shape,
    not overlapping x) receives y instead of a new tensor: a dead activation reused, no page faults.
    stats_only=True returns (None, s1, s2): the statistics without writing (or allocating) the output.
    """
    lib = _require_built()
    _check("x", x, (5,))
    if out is not None:
        _check("out", out, (5,))
    _check("weight", weight, (5,))
    if bias is not None:
        _check("bias", bias, (1,))
    _check_no_grad(x, weight, bias, out)
    if stats_only and out is not None:
        raise ValueError("cpp_ops.dwconv_stats: stats_only computes no output, so out must not be given")
    c, k = x.shape[1], weight.shape[2]
    if tuple(weight.shape) != (c, 1, k, k, k) or k % 2 == 0 or k > 7:
        raise ValueError(f"cpp_ops.dwconv_stats: weight must be (C, 1, k, k, k) with C={c} and odd k <= 7, "
                         f"got {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (c,):
        raise ValueError(f"cpp_ops.dwconv_stats: bias must be ({c},), got {tuple(bias.shape)}")
    if not transposed and stride not in (1, 2):
        raise ValueError(f"cpp_ops.dwconv_stats: stride must be 1 or 2, got {stride}")
    if x.numel() == 0:
        raise ValueError(f"cpp_ops.dwconv_stats: empty input of shape {tuple(x.shape)}")
    begin, end = (0, -1) if planes is None else (int(planes[0]), int(planes[1]))
    return lib.dwconv_stats(x, weight, bias, int(stride), bool(transposed), begin, end, out, bool(stats_only))


def norm_mlp(y: torch.Tensor, s1: torch.Tensor, s2: torch.Tensor,
             gamma: torch.Tensor, beta: torch.Tensor,
             w_expand: torch.Tensor, b_expand: torch.Tensor,
             w_compress: torch.Tensor, b_compress: torch.Tensor,
             residual: torch.Tensor | None = None, eps: float = 1e-5, out: torch.Tensor | None = None,
             bf16_gemms: bool | None = None):
    """GroupNorm(groups=C) from (s1, s2) -> 1x1x1 expand -> GELU(erf) -> 1x1x1 compress (+ residual).

    See ``ops.norm_mlp``. Returns (N, C_out, D, H, W) fp32 in channels_last_3d: a new tensor, or ``out``
    (channels_last_3d-contiguous, the output's shape) written in place. ``out`` may be ``y`` or
    ``residual`` itself (each voxel's inputs are read before its output is written), which saves one
    activation-sized buffer when the caller no longer needs them.

    ``bf16_gemms`` (default: as set by ``gemms_in_bf16``, else off) runs the expansion and compression
    of layers with C_out >= 64 in bf16 with fp32 normalisation, residual and output: 1.3-1.5x faster at
    C = 64 and 2-5x on C = 128-512 with native bf16, with errors below PyTorch's own CPU autocast.
    C_out 16/32 keep their fused fp32 kernel, which beats bf16 GEMMs there.
    """
    lib = _require_built()
    _check("y", y, (5,))
    for name, t in (("s1", s1), ("s2", s2)):
        _check(name, t, (2,))
    for name, t in (("gamma", gamma), ("beta", beta), ("b_expand", b_expand), ("b_compress", b_compress)):
        _check(name, t, (1,))
    _check("w_expand", w_expand, (2, 5))
    _check("w_compress", w_compress, (2, 5))
    if residual is not None:
        _check("residual", residual, (5,))
    if out is not None:
        _check("out", out, (5,))
    _check_no_grad(y, s1, s2, gamma, beta, w_expand, b_expand, w_compress, b_compress, residual, out)
    n, c = y.shape[:2]
    rc, c_out = w_expand.shape[0], w_compress.shape[0]
    want = {"s1": (n, c), "s2": (n, c), "gamma": (c,), "beta": (c,), "b_expand": (rc,), "b_compress": (c_out,)}
    got = {"s1": s1, "s2": s2, "gamma": gamma, "beta": beta, "b_expand": b_expand, "b_compress": b_compress}
    for name, shape in want.items():
        if tuple(got[name].shape) != shape:
            raise ValueError(f"cpp_ops.norm_mlp: {name} must be {shape}, got {tuple(got[name].shape)}")
    if tuple(w_expand.shape[:2]) != (rc, c) or w_expand[0, 0].numel() != 1:
        raise ValueError(f"cpp_ops.norm_mlp: w_expand must be (R*C, {c}[, 1, 1, 1]), got {tuple(w_expand.shape)}")
    if tuple(w_compress.shape[:2]) != (c_out, rc) or w_compress[0, 0].numel() != 1:
        raise ValueError(f"cpp_ops.norm_mlp: w_compress must be (C_out, {rc}[, 1, 1, 1]), "
                         f"got {tuple(w_compress.shape)}")
    if residual is not None and tuple(residual.shape) != (n, c_out, *y.shape[2:]):
        raise ValueError(f"cpp_ops.norm_mlp: residual must be {(n, c_out, *y.shape[2:])}, "
                         f"got {tuple(residual.shape)}")
    if y.numel() == 0:
        raise ValueError(f"cpp_ops.norm_mlp: empty input of shape {tuple(y.shape)}")
    if out is not None and tuple(out.shape) != (n, c_out, *y.shape[2:]):
        raise ValueError(f"cpp_ops.norm_mlp: out must be {(n, c_out, *y.shape[2:])}, got {tuple(out.shape)}")
    if out is not None and not out.is_contiguous(memory_format=torch.channels_last_3d):
        raise ValueError("cpp_ops.norm_mlp: out must be channels_last_3d-contiguous")
    if bf16_gemms is None:
        bf16_gemms = _GEMMS_IN_BF16.get()
    return lib.norm_mlp(y, s1, s2, gamma, beta, w_expand, b_expand, w_compress, b_compress, residual, float(eps),
                        out, bool(bf16_gemms))
