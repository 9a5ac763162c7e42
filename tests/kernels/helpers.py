"""Shared pieces of the kernel tests: random block parameters, layouts, error measures."""
import torch

from tests.kernels.conftest import DEVICE


def layout(t: torch.Tensor, kind: str) -> torch.Tensor:
    """The same values as ``t`` in one of the layouts callers may pass (a leaf that requires grad)."""
    t = t.detach()
    if kind == "channels_last":
        t = t.contiguous(memory_format=torch.channels_last_3d)
        assert not t.is_contiguous()
    elif kind == "noncontig":
        # A strided view of a larger buffer: neither NCDHW- nor NDHWC-contiguous.
        big = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
        big[..., ::2] = t
        t = big[..., ::2]
        assert not t.is_contiguous() and not t.is_contiguous(memory_format=torch.channels_last_3d)
    else:
        assert kind == "ncdhw"
    return t.requires_grad_()


def block_params(c: int, r: int, co: int, k: int, device=DEVICE, bias=True):
    """Random MedNeXt block parameters (fp32 leaves) with magnitudes like a trained block."""
    rc = r * c
    p = dict(
        w_dw=torch.randn(c, 1, k, k, k, device=device) / k ** 1.5,
        b_dw=torch.randn(c, device=device) if bias else None,
        gamma=1 + 0.3 * torch.randn(c, device=device),
        beta=0.3 * torch.randn(c, device=device),
        w_expand=torch.randn(rc, c, 1, 1, 1, device=device) / c ** 0.5,
        b_expand=0.3 * torch.randn(rc, device=device),
        w_compress=torch.randn(co, rc, 1, 1, 1, device=device) / rc ** 0.5,
        b_compress=0.3 * torch.randn(co, device=device),
    )
    return {name: (v.requires_grad_() if v is not None else None) for name, v in p.items()}


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| relative to max |b| (one number per tensor, robust to near-zero entries)."""
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def assert_close_rel(got, want, tol, what=""):
    err = max_rel(got, want)
    assert err <= tol, f"{what}: relative max error {err:.3g} > {tol:.1g}"


def assert_within_reference_error(tested, same_dtype_ref, fp32_ref, factor, what=""):
    """Low-precision rule: the kernel's error against fp32 is at most ``factor`` x that of PyTorch's own
    run in the same dtype (2 for outputs, 4 for gradients)."""
    err, ref_err = max_rel(tested, fp32_ref), max_rel(same_dtype_ref, fp32_ref)
    assert err <= factor * ref_err + 1e-6, f"{what}: error {err:.3g} > {factor} x PyTorch's {ref_err:.3g}"
