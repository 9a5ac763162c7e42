"""pytest-benchmark micro-benchmarks of single ops (kept out of the test run):

    python -m pytest benchmarks --benchmark-only
"""
import pytest
import torch

from mednext_fast import backends, ops

IMPLS = ["reference"] + [name for name in ("cpp",) if backends.is_available(name)]


def _impl(name):
    return ops if name == "reference" else backends.load(name).ops


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kernel", [3, 5, 7])
def test_dwconv_stats(benchmark, impl, kernel):
    x = torch.randn(1, 32, 48, 48, 48)
    w, b = torch.randn(32, 1, kernel, kernel, kernel), torch.randn(32)
    with torch.inference_mode():
        benchmark(_impl(impl).dwconv_stats, x, w, b)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("ratio", [2, 4])
def test_norm_mlp(benchmark, impl, ratio):
    y = torch.randn(1, 32, 48, 48, 48)
    s1, s2 = y.sum((2, 3, 4)), y.square().sum((2, 3, 4))
    args = (y, s1, s2, torch.ones(32), torch.zeros(32), torch.randn(32 * ratio, 32) * 0.1,
            torch.zeros(32 * ratio), torch.randn(32, 32 * ratio) * 0.1, torch.zeros(32), y)
    with torch.inference_mode():
        benchmark(_impl(impl).norm_mlp, *args)
