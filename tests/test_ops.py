"""The op contract (mednext_fast/ops.py): the references' options and the shared argument checks."""
import pytest
import torch

from mednext_fast import ops

MODES = {"stride1": (1, False), "stride2": (2, False), "transposed": (2, True)}


@pytest.mark.parametrize("mode", list(MODES))
def test_dwconv_stats_planes_out_and_stats_only_agree_with_the_whole_output(mode):
    stride, transposed = MODES[mode]
    x, w, b = torch.randn(2, 3, 5, 6, 7), torch.randn(3, 1, 3, 3, 3), torch.randn(3)
    y, s1, s2 = ops.dwconv_stats(x, w, b, stride, transposed)
    part, p1, p2 = ops.dwconv_stats(x, w, b, stride, transposed, planes=(1, 3))
    assert torch.equal(part, y[:, :, 1:3])
    torch.testing.assert_close(p1, y[:, :, 1:3].sum((2, 3, 4)))
    torch.testing.assert_close(p2, (y[:, :, 1:3] ** 2).sum((2, 3, 4)))
    none, t1, t2 = ops.dwconv_stats(x, w, b, stride, transposed, stats_only=True)
    assert none is None and torch.equal(t1, s1) and torch.equal(t2, s2)
    out = torch.empty_like(y)
    got, _, _ = ops.dwconv_stats(x, w, b, stride, transposed, out=out)
    assert got.data_ptr() == out.data_ptr() and torch.equal(out, y)


def test_norm_mlp_count_is_the_whole_outputs_voxels():
    """A chunk of y with the whole output's statistics and count gives that chunk of the whole result."""
    y = torch.randn(2, 4, 6, 3, 5)
    s1, s2 = y.sum((2, 3, 4)), (y * y).sum((2, 3, 4))
    params = [torch.rand(4) + 0.5, torch.randn(4), torch.randn(8, 4), torch.randn(8), torch.randn(4, 8),
              torch.randn(4)]
    whole = ops.norm_mlp(y, s1, s2, *params)
    chunk = ops.norm_mlp(y[:, :, 2:5], s1, s2, *params, count=y[0, 0].numel())
    torch.testing.assert_close(chunk, whole[:, :, 2:5])
    out = torch.empty_like(whole)
    assert ops.norm_mlp(y, s1, s2, *params, out=out).data_ptr() == out.data_ptr()
    torch.testing.assert_close(out, whole)


@pytest.mark.parametrize("kwargs,match", [
    (dict(planes=(3, 3)), "output planes"), (dict(planes=(0, 6)), "output planes"),
    (dict(stats_only=True, out=torch.empty(1, 2, 5, 5, 5)), "stats_only"),
    (dict(out=torch.empty(1, 2, 5, 5, 4)), "out must be"), (dict(stride=3), "stride must be 1 or 2")])
def test_dwconv_stats_checks(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ops.dwconv_stats(torch.randn(1, 2, 5, 5, 5), torch.randn(2, 1, 3, 3, 3), None, **kwargs)


@pytest.mark.parametrize("k", [4, 9])
def test_dwconv_stats_kernel_sizes(k):
    with pytest.raises(ValueError, match="odd k <= 7"):
        ops.dwconv_stats(torch.randn(1, 2, 5, 5, 5), torch.randn(2, 1, k, k, k), None)


@pytest.mark.parametrize("count", [59, 60.0, -1])
def test_norm_mlp_count_below_the_voxels_of_y_or_not_an_int(count):
    y = torch.randn(1, 2, 3, 4, 5)  # 60 voxels
    params = [torch.ones(2), torch.zeros(2), torch.randn(4, 2), torch.randn(4), torch.randn(2, 4), torch.randn(2)]
    with pytest.raises(ValueError, match="count must be an int"):
        ops.norm_mlp(y, y.sum((2, 3, 4)), (y * y).sum((2, 3, 4)), *params, count=count)
