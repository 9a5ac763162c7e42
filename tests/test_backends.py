"""Backend switch and dispatch; the fused-path wiring checked with the reference ops."""
import dataclasses
import types

import pytest
import torch

import mednext_fast as mf
from mednext_fast import backends, ops
from tests.conftest import fake_backend, tiny_mednext

REFERENCE_OPS = types.SimpleNamespace(dwconv_stats=ops.dwconv_stats, norm_mlp=ops.norm_mlp)

def _randomise(module):
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.3)
    return module


@pytest.mark.parametrize("kernel", [3, 5, 7])
@pytest.mark.parametrize("cls,out_ch,kw", [(mf.MedNeXtBlock, 6, dict(do_res=True)),
                                            (mf.MedNeXtBlock, 4, dict(do_res=False)),
                                            (mf.MedNeXtDownBlock, 12, dict(do_res=True)),
                                            (mf.MedNeXtUpBlock, 3, dict(do_res=True)),
                                            (mf.MedNeXtUpBlock, 3, dict(do_res=False))])
def test_fused_composition_equals_module_path(cls, out_ch, kw, kernel):
    if cls is mf.MedNeXtBlock and kw["do_res"]:
        out_ch = 6
    block = _randomise(cls(6, out_ch, exp_r=3, kernel_size=kernel, **kw))
    x = torch.randn(2, 6, 5, 6, 7)
    expected = block(x)
    got = block(x, ops=REFERENCE_OPS)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_model_dispatch_uses_fused_ops_where_covered(monkeypatch):
    calls = []

    def counting_norm_mlp(*args, **kwargs):
        calls.append(args[0].shape)
        return ops.norm_mlp(*args, **kwargs)

    fake = types.SimpleNamespace(dwconv_stats=ops.dwconv_stats, norm_mlp=counting_norm_mlp)
    monkeypatch.setitem(backends._LOADERS, "triton", lambda: fake_backend(fake))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    backends.clear_cache()
    try:
        ref = tiny_mednext(deep_supervision=True, backend="torch")
        fused = tiny_mednext(deep_supervision=True)
        fused.load_state_dict(ref.state_dict())
        mf.set_backend(fused, "triton")
        x = torch.randn(2, 1, 32, 32, 32)
        for a, b in zip(ref(x), fused(x)):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
        assert len(calls) == 17  # every block: 9 stride-1, 4 down and 4 up blocks
        sum(o.sum() for o in fused(x)).backward()
        sum(o.sum() for o in ref(x)).backward()
        for (name, p), q in zip(fused.named_parameters(), ref.parameters()):
            if q.grad is None:
                continue
            if name.endswith("conv1.bias"):
                # Per-channel GroupNorm cancels the conv bias: its exact gradient is 0 and both runs
                # hold only rounding noise, far below the weight gradient.
                weight_scale = dict(ref.named_parameters())[name[:-4] + "weight"].grad.abs().max()
                assert p.grad.abs().max() < 1e-4 * weight_scale and q.grad.abs().max() < 1e-4 * weight_scale
                continue
            assert (p.grad - q.grad).norm() <= 1e-4 * q.grad.norm(), name
    finally:
        backends.clear_cache()


def test_unknown_backend_name():
    with pytest.raises(ValueError, match="backend must be one of"):
        tiny_mednext(backend="cuda")


def test_missing_backends_say_what_is_missing(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    backends.clear_cache()
    try:
        checked = 0
        for name in ("triton", "cpp"):
            if backends.is_available(name):
                continue
            checked += 1
            with pytest.raises(mf.BackendUnavailable, match=f"backend='{name}'"):
                tiny_mednext(backend=name)
        assert checked or torch.cuda.is_available()  # on CPU without the interpreter triton is missing
    finally:
        backends.clear_cache()


def test_explicit_backend_rejects_unfusable_blocks(monkeypatch):
    monkeypatch.setitem(backends._LOADERS, "triton", lambda: fake_backend(REFERENCE_OPS))
    backends.clear_cache()
    try:
        with pytest.raises(ValueError, match="grn=True is not fused"):
            tiny_mednext(grn=True, backend="triton")
        with pytest.raises(ValueError, match="3-D only"):
            tiny_mednext(dim="2d", backend="triton")
    finally:
        backends.clear_cache()


def test_triton_backend_refuses_cpu_tensors_without_interpreter(monkeypatch):
    from mednext_fast.backends import triton as triton_backend
    cuda_only = dataclasses.replace(fake_backend(REFERENCE_OPS), devices=("cuda",),
                                    wrong_device=triton_backend.WRONG_DEVICE)
    monkeypatch.setitem(backends._LOADERS, "triton", lambda: cuda_only)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    backends.clear_cache()
    try:
        model = tiny_mednext(backend="triton")
        with pytest.raises(RuntimeError, match="needs CUDA tensors"):
            model(torch.randn(1, 1, 16, 16, 16))
    finally:
        backends.clear_cache()


def test_auto_on_cpu_without_extension_is_the_torch_path():
    model = tiny_mednext()
    assert model.backend == "auto"
    ref = tiny_mednext(backend="torch")
    ref.load_state_dict(model.state_dict())
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-5)


def test_dispatch_compiles_into_one_graph(monkeypatch):
    """select() runs inside the traced forward: it must not break the graph (torch.compile(fullgraph=True))."""
    monkeypatch.setitem(backends._LOADERS, "triton", lambda: fake_backend(REFERENCE_OPS))
    backends.clear_cache()
    try:
        model = tiny_mednext(deep_supervision=True, backend="triton")
        x = torch.randn(2, 1, 32, 32, 32)
        backends.load("triton")  # loaded before tracing, as the constructor's validation does
        explanation = torch._dynamo.explain(model)(x)
        assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    finally:
        backends.clear_cache()
