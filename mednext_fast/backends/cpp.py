"""backend='cpp': the fused C++ CPU ops (``mednext_fast._C``) and the inference run that uses them.

The ops have the signatures of ``mednext_fast.ops`` (fp32, 3-D). Inputs may be NCDHW or channels_last_3d;
outputs are logical NCDHW tensors in channels_last_3d memory format. They record no autograd graph, so
calling them on tensors that require grad while grad mode is on is an error; the backend is declared
inference-only and a forward that needs gradients runs the reference path. Threads follow
``torch.get_num_threads()``.

``run_model`` is the backend's whole-model runner. Nothing records autograd there, so it reuses buffers
and keeps about two full-resolution activations alive:

* the 1x1x1 stem runs as one per-voxel linear map, straight into channels-last;
* each stage block after the first writes its depthwise output into the previous block's input (dead by
  then), and norm_mlp writes each block's output over its depthwise output (or over its own ``res_conv``);
* an up block adds into the skip tensor: residual and front pad written in place, and its double-width
  depthwise output never whole (statistics from one stats-only pass, then the output in chunks of planes);
* under CPU autocast the run turns autocast off (the ops are fp32) and, where autocast asks for bf16 and
  the CPU has it natively, runs the wide layers' norm_mlp GEMMs in bf16; the output is fp32.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

from mednext_fast.model import LEVELS
from mednext_fast.ops import check_dwconv_stats, check_norm_mlp

from . import Backend, BackendUnavailable

BUILD_COMMAND = "pip install --no-build-isolation -e ."

try:
    from mednext_fast import _C
    _IMPORT_ERROR = None
except ImportError as err:  # not built, or built against another torch
    _C = None
    _IMPORT_ERROR = err


def available() -> tuple[bool, str]:
    """(True, ISA the conv kernel uses) if the extension is built, else (False, how to build it)."""
    if _C is None:
        note = os.path.join(os.path.dirname(os.path.dirname(__file__)), "_C_build_error.txt")
        failed = ""
        if os.path.exists(note):
            with open(note) as f:
                failed = f"; the last build failed: {f.read().strip()}"
        return False, (f"the C++ extension mednext_fast._C is not built ({_IMPORT_ERROR}{failed}); build it from "
                       f"the repository root with `{BUILD_COMMAND}` (needs a C++17 compiler with OpenMP)")
    return True, f"mednext_fast._C loaded (conv kernel ISA: {_C.isa()})"


def load() -> Backend:
    ok, why = available()
    if not ok:
        raise BackendUnavailable(f"backend='cpp' is not available: {why}")
    return Backend(name="cpp", ops=sys.modules[__name__], devices=("cpu",), dtypes=(torch.float32,),
                   autograd=False, run_model=run_model,
                   wrong_device="backend='cpp' runs on CPU tensors, got a {device} input; use backend='triton' "
                                "or 'torch' on GPUs")


_GEMMS_IN_BF16 = contextvars.ContextVar("mednext_fast_cpp_gemms_in_bf16", default=False)


def native_bf16() -> bool:
    """True if this CPU multiplies bf16 matrices natively (AVX512-BF16 / AMX), where bf16 GEMMs pay."""
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


@contextlib.contextmanager
def gemms_in_bf16(enabled: bool = True):
    """Within the block, ``norm_mlp`` calls that do not say otherwise run their wide-layer GEMMs in bf16."""
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
        raise TypeError(f"cpp: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise RuntimeError(f"cpp: {name} is on {t.device}; the C++ ops run on CPU tensors only "
                           "(use backend='triton' or 'torch' on GPUs)")
    if t.dtype != torch.float32:
        raise TypeError(f"cpp: {name} must be float32, got {t.dtype}")
    if dims is not None and t.dim() not in dims:
        raise ValueError(f"cpp: {name} must have {' or '.join(map(str, dims))} dims, got shape {tuple(t.shape)}")


def _check_no_grad(*tensors) -> None:
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        raise RuntimeError("cpp: the C++ ops are inference-only (no autograd); call them under "
                           "torch.no_grad() / torch.inference_mode(), or use backend='torch' to train")


# -- the ops ------------------------------------------------------------------------------------------------
def dwconv_stats(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int = 1,
                 transposed: bool = False, *, planes: tuple[int, int] | None = None,
                 out: torch.Tensor | None = None, stats_only: bool = False):
    """``mednext_fast.ops.dwconv_stats`` with every option: returns (y, s1, s2), y channels_last_3d.

    ``out`` must be channels_last_3d-contiguous.
    """
    lib = _require_built()
    for name, t, dims in (("x", x, (5,)), ("weight", weight, (5,)), ("bias", bias, (1,)), ("out", out, (5,))):
        if t is not None:
            _check(name, t, dims)
    _check_no_grad(x, weight, bias, out)
    check_dwconv_stats(x, weight, bias, stride, transposed, planes, out, stats_only)
    begin, end = (0, -1) if planes is None else (int(planes[0]), int(planes[1]))
    return lib.dwconv_stats(x, weight, bias, int(stride), bool(transposed), begin, end, out, bool(stats_only))


def norm_mlp(y: torch.Tensor, s1: torch.Tensor, s2: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor,
             w_expand: torch.Tensor, b_expand: torch.Tensor, w_compress: torch.Tensor, b_compress: torch.Tensor,
             residual: torch.Tensor | None = None, eps: float = 1e-5, *, count: int | None = None,
             out: torch.Tensor | None = None, bf16_gemms: bool | None = None):
    """``mednext_fast.ops.norm_mlp`` with every option: returns (N, C_out, D, H, W) fp32 channels_last_3d.

    ``out`` must be channels_last_3d-contiguous. ``bf16_gemms`` (default: as set by ``gemms_in_bf16``,
    else off) runs the expansion and compression of layers with C_out >= 64 in bf16 with fp32
    normalisation, residual and output; C_out 16/32 keep their fused fp32 kernel.
    """
    lib = _require_built()
    tensors = dict(y=(y, (5,)), s1=(s1, (2,)), s2=(s2, (2,)), gamma=(gamma, (1,)), beta=(beta, (1,)),
                   w_expand=(w_expand, (2, 5)), b_expand=(b_expand, (1,)), w_compress=(w_compress, (2, 5)),
                   b_compress=(b_compress, (1,)), residual=(residual, (5,)), out=(out, (5,)))
    for name, (t, dims) in tensors.items():
        if t is not None:
            _check(name, t, dims)
    _check_no_grad(*(t for t, _ in tensors.values()))
    check_norm_mlp(y, s1, s2, gamma, beta, w_expand, b_expand, w_compress, b_compress, residual, count, out)
    if out is not None and not out.is_contiguous(memory_format=torch.channels_last_3d):
        raise ValueError("norm_mlp: out must be channels_last_3d-contiguous")
    if bf16_gemms is None:
        bf16_gemms = _GEMMS_IN_BF16.get()
    return lib.norm_mlp(y, s1, s2, gamma, beta, w_expand, b_expand, w_compress, b_compress, residual, float(eps),
                        out, bool(bf16_gemms), int(count or 0))


# -- the inference run --------------------------------------------------------------------------------------
UP_CHUNK_BYTES = 8 * 2 ** 20  # an up block computes its depthwise output in chunks of about this size


def run_model(model, x: torch.Tensor):
    """``model(x)`` for a MedNeXt in inference, with the buffer reuse described in the module docstring.

    The output is fp32 also under CPU autocast (blocks the fused ops cannot run then run in fp32 too).
    """
    if torch.is_autocast_enabled("cpu"):
        bf16 = torch.get_autocast_dtype("cpu") == torch.bfloat16 and native_bf16()
        with torch.autocast("cpu", enabled=False), gemms_in_bf16(bf16):
            return _forward(model, x)
    return _forward(model, x)


def _forward(model, x: torch.Tensor):
    x = _stem(model.stem, x)
    skips = []
    for i in range(LEVELS):
        x = _stage(getattr(model, f"enc_block_{i}"), x)
        skips.append(x)
        x = _block(getattr(model, f"down_{i}"), x)
    x = _stage(model.bottleneck, x)
    ds = [model.out_4(x)] if model.do_ds else []
    for i in reversed(range(LEVELS)):
        x = _up_into(getattr(model, f"up_{i}"), x, skips.pop())
        x = _stage(getattr(model, f"dec_block_{i}"), x)
        if model.do_ds and i > 0:
            ds.append(getattr(model, f"out_{i}")(x))
    x = model.out_0(x)
    if model.do_ds:
        return [x] + ds[::-1]
    return x


def _stem(stem: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The 1x1x1 stem as a per-voxel linear map: its output is channels-last at once."""
    if isinstance(stem, nn.Conv3d) and stem.kernel_size == (1, 1, 1) and stem.stride == (1, 1, 1) and \
            stem.padding == (0, 0, 0) and stem.groups == 1:
        return F.linear(x.movedim(1, -1), stem.weight.flatten(1), stem.bias).movedim(-1, 1)
    return stem(x).contiguous(memory_format=torch.channels_last_3d)


def _stage(stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The stage's blocks in order; each block's input, dead once it ran, takes the next one's conv output."""
    spare = None
    for block in stage:
        x, spare = _block(block, x, scratch=spare), x
    return x


def _block(block, x: torch.Tensor, scratch: torch.Tensor | None = None) -> torch.Tensor:
    """A stride-1 or down block; ``scratch`` (a dead activation) may take its depthwise output."""
    if block.fusable() is not None:
        return block(x, ops=None)
    conv = block.conv_params()
    if scratch is not None and block.stride == 1 and scratch.shape == x.shape and \
            scratch.is_contiguous(memory_format=torch.channels_last_3d):
        conv["out"] = scratch
    y, s1, s2 = dwconv_stats(x, **conv)
    residual = block.residual(x)
    # The output goes over y (same shape when the channels match), else over a residual the block made
    # itself (res_conv): one activation less.
    out = None
    if y.shape[1] == block.conv3.out_channels:
        out = y
    elif residual is not None and residual is not x and residual.is_contiguous(memory_format=torch.channels_last_3d):
        out = residual
    return norm_mlp(y, s1, s2, **block.mlp_params(), residual=residual, out=out)


def _up_into(up, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """``skip + up(x)`` written into ``skip``, which nothing else holds."""
    if up.fusable() is not None:
        return skip.add_(up(x, ops=None))
    inner = skip[:, :, 1:, 1:, 1:]  # the official front pad puts the block's output after plane 0
    if up.resample_do_res:
        # res_conv, a stride-2 1x1x1 transposed conv: its bias everywhere, W^T x on the even voxels.
        inner += up.res_conv.bias.view(-1, 1, 1, 1)
        inner[:, :, ::2, ::2, ::2] += F.conv3d(x, up.res_conv.weight.transpose(0, 1))
    depth, count = inner.shape[2], inner[0, 0].numel()
    plane_bytes = x.shape[0] * x.shape[1] * inner.shape[3] * inner.shape[4] * 4
    step = max(torch.get_num_threads(), UP_CHUNK_BYTES // plane_bytes, 1)
    conv = up.conv_params()
    _, s1, s2 = dwconv_stats(x, **conv, stats_only=True)
    for begin in range(0, depth, step):
        end = min(begin + step, depth)
        y, _, _ = dwconv_stats(x, **conv, planes=(begin, end))
        inner[:, :, begin:end] += norm_mlp(y, s1, s2, **up.mlp_params(), count=count)
    return skip
