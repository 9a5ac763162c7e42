"""Sliding-window inference: shapes on small and non-divisible inputs, Gaussian weights, mirroring,
and the export back to the original geometry."""
import itertools

import numpy as np
import pytest
import torch

import mednext_fast as mf
from mednext_fast.train import data_bridge
from mednext_fast.train.preprocess import revert_to_original
from mednext_fast.train.inference import compute_steps, gaussian_importance, sliding_window, window_batch

from ._run_helpers import one_thread

_threads = pytest.fixture(autouse=True)(one_thread)


def _tiny(ds=True):
    return mf.MedNeXt(1, 4, 2, exp_r=2, kernel_size=3, do_res=True, do_res_up_down=True, deep_supervision=ds,
                      block_counts=[1] * 9, backend="torch").eval()


@pytest.mark.parametrize("shape", [(20, 9, 27), (33, 20, 40)])
def test_prediction_shape_equals_input_shape(shape):
    # (20, 9, 27): smaller than the 32^3 patch on every axis and not divisible by 16; (33, 20, 40): several tiles
    image = torch.randn((1,) + shape)
    out = sliding_window(_tiny(), image, (32, 32, 32), 2)
    assert out.shape == (2,) + shape
    assert torch.isfinite(out).all()


def test_deep_supervision_heads_skipped_and_restored():
    model = _tiny(ds=True)
    calls = []
    model.out_1.register_forward_hook(lambda *_: calls.append(1))
    x = torch.randn(1, 32, 32, 32)
    got = sliding_window(model, x, (32, 32, 32), 2)
    assert calls == [] and model.do_ds  # only full resolution computed; the flag is back afterwards
    with torch.no_grad():
        expected = model(x[None])[0][0]
    assert calls == [1]
    assert torch.allclose(got, expected, atol=1e-6)


def test_steps_follow_nnunet():
    # ceil((size - patch) / (patch * 0.5)) + 1 steps, spread evenly from 0 to size - patch:
    # 100: ceil(68 / 16) + 1 = 6 steps at multiples of 68 / 5 = 13.6, rounded
    assert compute_steps([32, 40, 100], [32, 32, 32]) == [[0], [0, 8], [0, 14, 27, 41, 54, 68]]


def test_gaussian_importance_map():
    patch = (32, 16, 24)
    g = gaussian_importance(patch).astype(np.float64)
    centre = tuple(p // 2 for p in patch)
    assert g.shape == patch and g[centre] == pytest.approx(10) and g.max() == pytest.approx(10)
    assert g.min() > 0
    # separable Gaussian with sigma = patch / 8: neighbour ratio along each axis is exp(-1 / (2 sigma^2))
    for axis, p in enumerate(patch):
        sigma = p / 8
        step = list(centre)
        step[axis] += 1
        assert g[tuple(step)] / g[centre] == pytest.approx(np.exp(-1 / (2 * sigma ** 2)), rel=1e-3)


class _Constant(torch.nn.Module):
    """Logits that are the same everywhere: blending with any positive weights must return them."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([0.3, -1.2]))

    def forward(self, x):
        return self.w.view(1, 2, 1, 1, 1).expand(x.shape[0], 2, *x.shape[2:]) + 0 * x


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_batched_windows_give_the_same_logits_as_one_at_a_time(backend):
    if backend == "cpp" and not mf.backends.is_available("cpp"):
        pytest.skip("C++ extension not built")
    model = mf.MedNeXt(1, 4, 3, exp_r=2, kernel_size=3, do_res=True, do_res_up_down=True, deep_supervision=True,
                       block_counts=[1] * 9, backend=backend).eval()
    image = torch.randn(1, 45, 37, 50)  # 3 x 2 x 3 windows of 32^3 at step 0.5; the batches do not divide them
    one = sliding_window(model, image, (32, 32, 32), 3, batch_size=1)
    for batch in (4, 18, 64):
        assert torch.allclose(sliding_window(model, image, (32, 32, 32), 3, batch_size=batch), one, atol=1e-5)
    assert window_batch((64, 64, 64)) == 4 and window_batch((32, 32, 32)) == 32 and window_batch((256,) * 3) == 1


def test_overlapping_tiles_are_normalised():
    out = sliding_window(_Constant(), torch.randn(1, 45, 37, 50), (16, 16, 16), 2)
    assert torch.allclose(out, torch.tensor([0.3, -1.2]).view(2, 1, 1, 1).expand_as(out), atol=1e-6)


def test_mirroring_averages_all_8_flips():
    model = _tiny(ds=False)
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        expected = sum(torch.flip(model(torch.flip(x, d)), d)
                       for k in range(4) for d in map(lambda a: [i + 2 for i in a],
                                                      itertools.combinations(range(3), k))) / 8
        plain = model(x)
    got = sliding_window(model, x[0], (32, 32, 32), 2, mirror_axes=(0, 1, 2))
    assert torch.allclose(got, expected[0], atol=1e-5)
    assert not torch.allclose(got, plain[0], atol=1e-3)  # mirroring really changed something


def test_export_restores_original_geometry():
    rng = np.random.default_rng(0)
    image = np.zeros((1, 30, 26, 21), np.float32)
    image[0, 3:27, 2:24, 4:19] = rng.uniform(1, 2, (24, 22, 15))  # nonzero region: the crop
    label = np.zeros((30, 26, 21), np.int16)
    label[8:20, 6:18, 7:15] = 1
    label[11:17, 9:15, 8:14] = 2
    plans = dict(target_spacing=[1.0, 1.0, 1.0], normalization=["ZScore"], use_mask_for_norm=[False])
    spacing = (1.0, 1.5, 0.8)  # forces a resample in both directions
    pre, props = data_bridge.preprocess_image(image, spacing, plans)
    assert pre.shape[1:] == (24, 33, 12)
    # the reference label, cropped and resampled like the image, as one-hot "probabilities"
    from mednext_fast.train.preprocess import resample_seg
    crop = label[tuple(slice(a, b) for a, b in props["bbox"])]
    lab = resample_seg(crop, spacing, plans["target_spacing"], list(pre.shape[1:]))
    probs = torch.nn.functional.one_hot(torch.from_numpy(lab.astype(np.int64)), 3).movedim(-1, 0).float()
    back = revert_to_original(probs, props, plans)
    assert back.shape == label.shape
    assert (back[label == 0] == 0).mean() > 0.97
    assert (back[label == 1] == 1).mean() > 0.85 and (back[label == 2] == 2).mean() > 0.8
    assert (back[:3] == 0).all()  # outside the crop: background


def test_fold_ensemble_averages_probabilities():
    from mednext_fast.train.inference import predict_probabilities
    a, b = _Constant(), _Constant()
    with torch.no_grad():
        b.w.copy_(torch.tensor([-2.0, 1.0]))
    image = torch.randn(1, 20, 18, 17)
    got = predict_probabilities([a, b], image, (16, 16, 16), 2)
    expected = (torch.softmax(a.w, 0) + torch.softmax(b.w, 0)) / 2
    assert torch.allclose(got, expected.view(2, 1, 1, 1).expand_as(got), atol=1e-6)
    # averaging probabilities differs from averaging logits here, so the test tells them apart
    assert not torch.allclose(expected, torch.softmax((a.w + b.w) / 2, 0), atol=1e-3)
