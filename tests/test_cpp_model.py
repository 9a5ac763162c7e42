"""The whole model on backend='cpp' (inference) equals backend='torch'."""
import pytest
import torch

import mednext_fast as mf
from mednext_fast import backends

pytestmark = pytest.mark.skipif(not backends.is_available("cpp"), reason="the C++ extension is not built")


@pytest.mark.parametrize("variant,kernel", [("S", 3), ("S", 5), ("B", 3), ("B", 5)])
def test_paper_models_match_torch_backend(variant, kernel):
    ref = mf.create_mednext(variant, 1, 3, kernel_size=kernel, deep_supervision=True, backend="torch").eval()
    fused = mf.create_mednext(variant, 1, 3, kernel_size=kernel, deep_supervision=True, backend="cpp").eval()
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        expected, got = ref(x), fused(x)
    for a, b in zip(expected, got):
        assert (a - b).abs().max() <= 1e-4 * a.abs().max()


def test_cpp_backend_trains_on_the_torch_path():
    model = mf.create_mednext("S", 1, 2, backend="cpp")
    out = model(torch.randn(1, 1, 32, 32, 32))
    out.sum().backward()  # would fail if the inference-only kernels had run
    assert model.enc_block_0[0].conv1.weight.grad is not None


def test_auto_picks_cpp_for_cpu_inference():
    model = mf.create_mednext("S", 1, 2).eval()
    calls = []
    ops = backends.load_ops("cpp")
    original = ops.norm_mlp
    ops.norm_mlp = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        with torch.inference_mode():
            model(torch.randn(1, 1, 32, 32, 32))
    finally:
        ops.norm_mlp = original
    assert len(calls) == 2 * 9 + 8  # every stage, down and up block of S
