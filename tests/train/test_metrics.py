"""DSC, NSD and HD95 against MONAI (an independent implementation) and hand counts.

Our convention is MONAI's default: edge voxels (mask XOR erosion), every edge voxel weighs 1, exact
Euclidean distances in mm; HD95 = max of the two directed 95th percentiles. MONAI's subvoxel mode
(DeepMind's area-weighted surfels) is a different convention and is not what we implement.
"""
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage

from mednext_fast.train import metrics

monai_metrics = pytest.importorskip("monai.metrics")

SPACING = (1.0, 0.7, 2.5)


def _onehot(mask):
    m = torch.as_tensor(mask, dtype=torch.bool)
    return torch.stack([~m, m])[None].float()


def _monai(pred, ref, spacing, tol):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns about empty masks; that is the case under test
        nsd = monai_metrics.compute_surface_dice(_onehot(pred), _onehot(ref), [tol], spacing=spacing).item()
        hd = monai_metrics.compute_hausdorff_distance(_onehot(pred), _onehot(ref), percentile=95,
                                                      spacing=spacing).item()
    return nsd, hd


def _blobs(rng, shape, n):
    return [ndimage.gaussian_filter(rng.normal(size=shape), 1.5) > rng.uniform(0, 0.15) for _ in range(n)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nsd_and_hd95_match_monai_on_random_masks_with_anisotropic_spacing(seed):
    rng = np.random.default_rng(seed)
    pred, ref = _blobs(rng, (18, 22, 14), 2)
    for tol in (1.0, 2.0):
        m_nsd, m_hd = _monai(pred, ref, SPACING, tol)
        assert metrics.nsd(pred, ref, SPACING, tol) == pytest.approx(m_nsd, abs=1e-6)
    assert metrics.hd95(pred, ref, SPACING) == pytest.approx(m_hd, rel=1e-5)
    assert 0 < metrics.nsd(pred, ref, SPACING) < 1  # a real partial overlap, not a trivial case


def test_small_objects_touching_the_border():
    ref = np.zeros((12, 12, 12), bool)
    ref[:3, 4:9, 5:7] = True  # touches the border: border voxels count as edges in both
    pred = np.roll(ref, 1, axis=1)
    pred[9:, 9:, 9:] = True  # a false-positive island far away drives HD95 up
    m_nsd, m_hd = _monai(pred, ref, SPACING, 1.0)
    assert metrics.nsd(pred, ref, SPACING) == pytest.approx(m_nsd, abs=1e-6)
    assert metrics.hd95(pred, ref, SPACING) == pytest.approx(m_hd, rel=1e-5)


def test_empty_masks():
    rng = np.random.default_rng(3)
    mask = _blobs(rng, (10, 12, 9), 1)[0]
    empty = np.zeros_like(mask)
    # one side empty: NSD 0 (as MONAI), HD95 inf, Dice 0
    assert metrics.nsd(empty, mask, SPACING) == 0 == _monai(empty, mask, SPACING, 1.0)[0]
    assert metrics.nsd(mask, empty, SPACING) == 0 == _monai(mask, empty, SPACING, 1.0)[0]
    assert metrics.hd95(empty, mask, SPACING) == np.inf
    assert metrics.hd95(mask, empty, SPACING) == np.inf
    assert metrics.dice(empty, mask) == 0
    # both empty: undefined (NaN) for every metric, as MONAI's NSD and nnU-Net's Dice
    assert np.isnan(_monai(empty, empty, SPACING, 1.0)[0])
    for value in (metrics.nsd(empty, empty, SPACING), metrics.hd95(empty, empty, SPACING),
                  metrics.dice(empty, empty)):
        assert np.isnan(value)


def test_dice_and_case_metrics_by_hand():
    ref = np.zeros((8, 8, 8), np.int16)
    pred = np.zeros_like(ref)
    ref[1:5, 1:5, 1:5] = 1   # 64 voxels
    pred[2:6, 1:5, 1:5] = 1  # 64 voxels, 48 shared
    ref[6, 6, 6] = 2
    out = metrics.case_metrics(pred, ref, [1, 2], (1, 1, 1))
    assert out[1]["dice"] == pytest.approx(2 * 48 / 128)
    assert out[1]["hd95"] == pytest.approx(1.0)  # a one-voxel shift
    assert out[2]["dice"] == 0 and out[2]["hd95"] == np.inf and out[2]["n_ref"] == 1 and out[2]["n_pred"] == 0
    summary = metrics.summarize({"a": out, "b": out})
    assert summary["1"]["dice"] == pytest.approx(0.75)
    diagonal = np.sqrt(3 * 8 ** 2)
    assert out[2]["hd95_worst_case"] == pytest.approx(diagonal) == metrics.worst_distance((8, 8, 8), (1, 1, 1))
    with pytest.raises(ValueError, match="shape"):
        metrics.case_metrics(pred[:-1], ref, [1], (1, 1, 1))


def test_summaries_never_average_an_inf():
    ref = np.zeros((8, 8, 8), np.int16)
    ref[1:5, 1:5, 1:5] = 1
    ref[6, 6, 6] = 2
    hit = metrics.case_metrics(ref, ref, [1, 2], (1, 1, 1))  # perfect
    miss = metrics.case_metrics(np.where(ref == 2, 0, ref), ref, [1, 2], (1, 1, 1))  # class 2 not predicted
    summary = metrics.summarize({"a": hit, "b": miss})
    assert summary["2"]["hd95"] == 0.0 and summary["2"]["hd95_undefined"] == 1  # the defined case only
    assert summary["2"]["hd95_worst_case"] == pytest.approx(np.sqrt(3 * 64) / 2)
    fg = summary["foreground_mean"]
    assert fg["hd95_undefined"] == 1 and all(np.isfinite(fg[k]) for k in ("dice", "nsd", "hd95", "hd95_worst_case"))
    assert "1 class-case(s) with an empty prediction" in metrics.format_summary(fg)
    assert metrics.jsonable({"b": miss})["b"][2]["hd95"] is None
    assert "undef" in metrics.format_table({"b": miss})
    # no case defines it: NaN (not inf), and the worst case still says how bad
    only_miss = metrics.summarize({"b": miss})["2"]
    assert np.isnan(only_miss["hd95"]) and only_miss["hd95_worst_case"] > 0
