"""Every launch configuration the tuner may pick for the depthwise conv kernels (forward, dgrad, weight
gradient) against the reference, in all three modes and at k = 3/5/7; the configuration lookup order."""
import importlib
import json

import pytest
import torch

from mednext_fast import ops
from tests.kernels.conftest import DEVICE
from tests.kernels.helpers import assert_close_rel, layout

dw_mod = importlib.import_module("mednext_fast.kernels.dwconv_stats")
tuning = importlib.import_module("mednext_fast.kernels.tuning")

MODES = {"stride1": dict(stride=1), "down": dict(stride=2), "up": dict(transposed=True)}
# Odd and non-cubic sizes, several boxes per sample for every candidate; smaller ones at k5/k7, where the
# interpreter's cost grows with k^3.
SPATIAL = {"stride1": (4, 5, 6), "down": (5, 6, 7), "up": (3, 3, 4)}
SPATIAL_LARGE_K = {"stride1": (3, 4, 5), "down": (5, 4, 3), "up": (2, 3, 3)}


def _grads(fn, x, w, b, kw):
    y, s1, s2 = fn(x, w, b, **kw)
    g = torch.Generator(device="cpu").manual_seed(1)
    gy, g1, g2 = [torch.randn(t.shape, generator=g).to(t.device, t.dtype) for t in (y, s1, s2)]
    loss = (y.double() * gy.double()).sum() + (s1.double() * g1.double()).sum() + (s2.double() * g2.double()).sum()
    return (y, s1, s2), torch.autograd.grad(loss, (x, w, b))


def _check(mode, k, c, spatial):
    kw = MODES[mode]
    x = layout(torch.randn(2, c, *spatial, device=DEVICE), "channels_last")
    w = (torch.randn(c, 1, k, k, k, device=DEVICE) / k ** 1.5).requires_grad_()
    b = torch.randn(c, device=DEVICE).requires_grad_()
    outs, grads = _grads(dw_mod.dwconv_stats, x, w, b, kw)
    refs = [t.detach().double().contiguous().requires_grad_() for t in (x, w, b)]
    routs, rgrads = _grads(ops.dwconv_stats, *refs, kw)
    for name, got, want in zip(("y", "s1", "s2"), outs, routs):
        assert_close_rel(got, want, 2e-6, name)
    for name, got, want in zip(("x", "weight", "bias"), grads, rgrads):
        assert_close_rel(got, want, 2e-5, f"grad {name}")


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("index", range(len(dw_mod.CONV_SPACE)))
def test_every_tuning_candidate_matches_reference(monkeypatch, mode, index):
    # Conv candidate i with wgrad candidate i (mod their count); k3 keeps the interpreter quick.
    monkeypatch.setitem(tuning.FORCED, "conv", dw_mod.CONV_SPACE[index])
    monkeypatch.setitem(tuning.FORCED, "wgrad", dw_mod.WGRAD_SPACE[index % len(dw_mod.WGRAD_SPACE)])
    _check(mode, 3, 36, SPATIAL[mode])  # 36 channels: a full block of 32 and a partial one


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("k", [5, 7])
def test_defaults_of_larger_kernels_match_reference(monkeypatch, mode, k):
    monkeypatch.setitem(tuning.FORCED, "conv", dw_mod.conv_default(k, mode == "up"))
    monkeypatch.setitem(tuning.FORCED, "wgrad", dw_mod.wgrad_default(k))
    _check(mode, k, 20, SPATIAL_LARGE_K[mode])  # 20: one partial channel block


def test_wgrad_split_covers_every_position_once():
    for cfg in dw_mod.WGRAD_SPACE + (tuning.WgradConfig(16, 16, 4, 80),):
        for n, s, c, k in ((2, 128 ** 3, 32, 5), (2, 8 ** 3, 512, 7), (1, 60, 20, 3), (2, 175, 20, 3)):
            chunks, nsub = dw_mod.wgrad_split(cfg, n, s, c, k)
            tiles = -(-s // cfg.bs)
            assert chunks * nsub >= tiles and (chunks - 1) * nsub < tiles, (cfg, n, s)


def test_conv_box_fills_the_config_and_prefers_w():
    cfg = tuning.ConvConfig(64, 16, 32, 4)
    assert dw_mod.conv_box(cfg, (128, 128, 128)) == (1, 4, 16)
    assert dw_mod.conv_box(cfg, (8, 8, 8)) == (1, 8, 8)
    assert dw_mod.conv_box(cfg, (4, 2, 3)) == (8, 2, 4)  # small planes: the box grows along D
    for dims in ((3, 5, 7), (128, 1, 1), (1, 1, 200)):
        td, th, tw = dw_mod.conv_box(cfg, dims)
        assert td * th * tw == cfg.bs


def test_choose_order_forced_table_tuned_default(monkeypatch, tmp_path):
    default, other = tuning.ConvConfig(64, 16, 32, 4), tuning.ConvConfig(32, 8, 32, 2)
    launch_key = tuning.key("conv", 32, (16, 16, 16), 3, "stride1-fwd", torch.bfloat16)
    assert launch_key == "conv|C32|16x16x16|k3|stride1-fwd|bfloat16"
    # No GPU: the default, whatever the tables say.
    assert tuning.choose("conv", launch_key, default, [other]) == default
    # A GPU with a committed table: the table's entry; the user's cache overrides it.
    monkeypatch.setattr(tuning, "_device_slug", lambda device: "test-gpu")
    monkeypatch.setattr(tuning, "TUNED_DIR", str(tmp_path / "committed"))
    monkeypatch.setenv("MEDNEXT_FAST_CACHE_DIR", str(tmp_path / "cache"))
    tuning.clear()
    tuning.write_table(str(tmp_path / "committed" / "test-gpu.json"), {launch_key: other})
    assert tuning.choose("conv", launch_key, default, [], device="cuda") == other
    # A miss with tuning on: the fastest candidate is used and saved in the user's cache.
    monkeypatch.setattr(tuning, "_may_tune", lambda device: True)
    miss = tuning.key("conv", 64, (8, 8, 8), 5, "down-dgrad", torch.float16)
    timings = {default: 2.0, other: 1.0}
    assert tuning.choose("conv", miss, default, [other], timings.get, "cuda") == other  # default timed too
    assert tuning.TIMINGS.pop(miss) == {"default": 2.0, "candidates": [(other, 1.0), (default, 2.0)]}
    saved = json.loads((tmp_path / "cache" / "tuned-test-gpu.json").read_text())["configs"]
    assert saved == {miss: list(other)}
    tuning.clear()
    assert tuning.choose("conv", miss, default, [], device="cuda") == other  # read back from the cache
    # Forced wins over everything.
    monkeypatch.setitem(tuning.FORCED, "conv", default)
    assert tuning.choose("conv", launch_key, other, [], device="cuda") == default
    tuning.clear()


def test_corrupt_table_names_the_file(monkeypatch, tmp_path):
    monkeypatch.setattr(tuning, "TUNED_DIR", str(tmp_path))
    monkeypatch.setattr(tuning, "_device_slug", lambda device: "bad-gpu")
    (tmp_path / "bad-gpu.json").write_text("{not json")
    tuning.clear()
    with pytest.raises(RuntimeError, match="bad-gpu.json"):
        tuning.choose("conv", "k", None, [], device="cuda")
    tuning.clear()


def test_gpu_slug():
    assert tuning.gpu_slug("NVIDIA H200") == "nvidia-h200"
    assert tuning.gpu_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"


def test_tune_cli_order_and_refusal_without_cuda(capsys):
    tune = importlib.import_module("mednext_fast.kernels.tune")
    order = list(tune.cases([0, 4], [3, 7]))
    assert order[:3] == [(0, 7, "stride1"), (0, 7, "down"), (0, 7, "up")]  # the most expensive first
    assert (4, 3, "stride1") in order and (4, 3, "down") not in order  # level 4 has no resampling block
    if not torch.cuda.is_available():
        assert tune.main([]) == 2
        assert "needs a CUDA GPU" in capsys.readouterr().err


def test_every_launch_of_a_level_has_its_own_tuning_key(monkeypatch):
    # The nine launches of one level (forward, dgrad, wgrad of the stride-1, down and up blocks) run six
    # different kernels on equal sizes: a shared key would hand one's tuned configuration to another.
    from tests.kernels.sm90_compile import recording
    keys = []

    def record(kernel, launch_key, default, space, bench=None, device=None):
        keys.append(launch_key)
        return default
    monkeypatch.setattr(tuning, "choose", record)
    meta = dict(device="meta")
    with recording([], [""]):
        for kw, edge in ((dict(stride=1, transposed=False), 16), (dict(stride=2, transposed=False), 16),
                         (dict(stride=2, transposed=True), 8)):
            x = torch.empty(2, 32, edge, edge, edge, dtype=torch.bfloat16, **meta)
            w, b = torch.empty(32, 1, 5, 5, 5, **meta), torch.empty(32, **meta)
            y, s1, s2 = dw_mod._forward(x, w, b, kw["stride"], kw["transposed"])
            dw_mod._backward(y, s1, s2, x, w, y, kw["stride"], kw["transposed"])
    assert len(keys) == 9 and len(set(keys)) == 9, keys


def test_unwritable_cache_warns_and_keeps_the_tuned_choice(monkeypatch, tmp_path):
    monkeypatch.setattr(tuning, "_device_slug", lambda device: "test-gpu")
    monkeypatch.setattr(tuning, "_may_tune", lambda device: True)
    monkeypatch.setattr(tuning, "TUNED_DIR", str(tmp_path))
    monkeypatch.setattr(tuning, "write_table", lambda *a, **k: (_ for _ in ()).throw(OSError("read-only")))
    tuning.clear()
    a, b = tuning.ConvConfig(64, 16, 32, 4), tuning.ConvConfig(32, 8, 32, 2)
    with pytest.warns(RuntimeWarning, match="could not save"):
        assert tuning.choose("conv", "k1", a, [b], {a: 2.0, b: 1.0}.get, "cuda") == b
    tuning.TIMINGS.pop("k1", None)
    assert tuning.choose("conv", "k1", a, [], device="cuda") == b  # kept in this process
    tuning.clear()
