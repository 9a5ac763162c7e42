"""Preprocessing: resampling round trip and shape rule, separate z, CT normalisation by hand, cache reuse."""
import os

import numpy as np
import pytest

from mednext_fast.atomic import write_json
from mednext_fast.train import dataset_io as dio
from mednext_fast.train import preprocess as pp


def _dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def _objects(shape, spacing):
    """Label with a sphere (r 9 mm), a box and a thin-ish ellipsoid, in mm so spacing does not change them."""
    mm = np.stack(np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(shape, spacing)], indexing="ij"))
    lab = np.zeros(shape, np.int16)
    lab[((mm - np.array([15, 16, 17.0])[:, None, None, None]) ** 2).sum(0) <= 9 ** 2] = 1
    lab[(mm[0] > 27) & (mm[0] < 38) & (mm[1] > 6) & (mm[1] < 20) & (mm[2] > 22) & (mm[2] < 36)] = 2
    centre, radii = np.array([30, 30, 10.0])[:, None, None, None], np.array([6, 5, 4.0])[:, None, None, None]
    ell = (((mm - centre) / radii) ** 2).sum(0) <= 1
    lab[ell] = 3
    return lab


@pytest.mark.parametrize("spacing", [(0.7, 1.3, 0.9), (0.6, 0.6, 2.5)])
def test_resampling_round_trip_dice_and_shape_rule(spacing):
    shape = tuple(int(round(42 / s)) for s in spacing)
    lab = _objects(shape, spacing)
    target = (1.0, 1.0, 1.0)
    there = pp.resample_seg(lab, spacing, target)
    assert list(there.shape) == [int(round(s / t * n)) for n, s, t in zip(shape, spacing, target)]
    back = pp.resample_seg(there, target, spacing, shape=shape)
    assert back.shape == lab.shape
    for k in (1, 2, 3):
        assert (lab == k).sum() > 50
        assert _dice(lab == k, back == k) >= 0.95, k
    # images: order 3, same shape rule; a smooth image survives the round trip closely
    img = np.sin(np.indices(shape).sum(0) / 6.0)[None].astype(np.float32)
    img_there = pp.resample_image(img, spacing, target)
    assert list(img_there.shape[1:]) == list(there.shape)
    img_back = pp.resample_image(img_there, target, spacing, shape=shape)
    assert np.abs(img_back - img)[:, 3:-3, 3:-3, 3:-3].max() < 0.1


def test_separate_z_rule():
    assert pp.separate_z_axis((0.8, 0.8, 4.0), (1, 1, 1)) == 2
    assert pp.separate_z_axis((1, 1, 1), (1, 1, 3.5)) == 2
    assert pp.separate_z_axis((1, 1, 1), (1, 1, 2.9)) is None
    assert pp.separate_z_axis((4, 4, 1), (1, 1, 1)) is None  # two coarse axes: no separate z
    # along the separate axis the seg is resampled with nearest neighbour: each slice is a copy
    lab = np.zeros((20, 20, 5), np.int16)
    for z in range(5):
        lab[5:15, 5:15, z] = z % 2 + 1
    out = pp.resample_seg(lab, (1.0, 1.0, 4.0), (1.0, 1.0, 1.0))
    assert out.shape == (20, 20, 20)
    for z in range(20):
        assert np.array_equal(out[:, :, z], lab[:, :, z // 4])


def _write_ct_case(root, name, image, label, spacing=(1.0, 1.0, 1.0)):
    aff = np.diag(list(spacing) + [1.0])
    dio.write_volume(image.astype(np.float32), aff, os.path.join(root, "imagesTr", f"{name}_0000.nii.gz"))
    dio.write_volume(label.astype(np.uint8), aff, os.path.join(root, "labelsTr", f"{name}.nii.gz"))


def test_ct_normalisation_equals_hand_computation(tmp_path):
    raw = str(tmp_path / "raw")
    rng = np.random.default_rng(0)
    images, labels = [], []
    for i in range(2):
        img = rng.normal(40, 300, (14, 12, 10)).astype(np.float32)  # no exact zeros: no cropping
        lab = np.zeros(img.shape, np.uint8)
        lab[3:9, 2:8, 2:7] = 1
        lab[9:12, 8:11, 5:9] = 2
        img[lab == 2] += 900  # bright class: the 99.5 percentile clip matters
        _write_ct_case(raw, f"ct_{i}", img, lab)
        images.append(img), labels.append(lab)
    write_json(os.path.join(raw, "dataset.json"), dict(channel_names={"0": "CT"},
                                                       labels={"background": 0, "a": 1, "b": 2}, numTraining=2,
                                                       file_ending=".nii.gz"))
    plans = pp.prepare_dataset(raw, str(tmp_path / "pp"), workers=0, progress=False)
    # hand computation: pooled foreground voxels (all of them: < 10000 per case) of both cases
    fg = np.concatenate([im[lab > 0].astype(np.float64) for im, lab in zip(images, labels)])
    lo, hi = np.percentile(fg, 0.5), np.percentile(fg, 99.5)
    mean, std = fg.mean(), fg.std()
    assert plans["normalization"] == ["CT"] and plans["use_mask_for_norm"] == [False]
    for i in range(2):
        data, seg, _, props = pp.load_case(str(tmp_path / "pp"), f"ct_{i}")
        expected = (np.clip(images[i].astype(np.float64), lo, hi) - mean) / std
        assert data.shape == (1,) + images[i].shape and props["bbox"] == [[0, n] for n in images[i].shape]
        np.testing.assert_allclose(data[0], expected, rtol=1e-5, atol=1e-5)
        assert np.array_equal(seg, labels[i])


def test_zscore_with_mask_and_cache_reuse(tmp_path):
    from mednext_fast.train.synthetic import write_synthetic_dataset
    raw = write_synthetic_dataset(str(tmp_path / "raw"), "mr", n_cases=2, shape=(24, 24, 24))
    out = str(tmp_path / "pp")
    plans = pp.prepare_dataset(raw, out, workers=0, progress=False, patch_size=(16, 16, 16))
    assert plans["cache"] == {"preprocessed": 2, "reused": 0}
    assert plans["patch_size"] == [16, 16, 16] and plans["target_spacing"] == [1.0, 1.0, 1.0]
    data, seg, locs, props = pp.load_case(out, plans["cases"][0])
    assert isinstance(data, np.memmap)
    # the phantom body fills < 3/4 of its bounding box: nnU-Net's mask-for-norm rule switches on
    assert plans["use_mask_for_norm"] == [True] and (seg == -1).any()
    inside = seg >= 0
    assert abs(data[0][inside].mean()) < 1e-4 and abs(data[0][inside].std() - 1) < 1e-3
    assert (data[0][~inside] == 0).all()
    for k, idx in locs.items():
        assert (seg[tuple(idx.T)] == k).all()
    again = pp.prepare_dataset(raw, out, workers=0, progress=False, patch_size=(16, 16, 16))
    assert again["cache"] == {"preprocessed": 0, "reused": 2}
    # touching one input re-does that case only; changing the plans re-does all
    lab_file = os.path.join(raw, "labelsTr", f"{plans['cases'][1]}.nii.gz")
    os.utime(lab_file, ns=(os.stat(lab_file).st_atime_ns, os.stat(lab_file).st_mtime_ns + 10 ** 9))
    assert pp.prepare_dataset(raw, out, workers=0, progress=False, patch_size=(16, 16, 16))["cache"] == \
        {"preprocessed": 1, "reused": 1}
    assert pp.prepare_dataset(raw, out, workers=0, progress=False, patch_size=(32, 32, 32))["cache"] == \
        {"preprocessed": 2, "reused": 0}


def test_median_target_spacing_anisotropy_rule():
    spacings = [(0.8, 0.8, 5.0), (0.8, 0.8, 5.0), (0.7, 0.7, 3.0), (0.9, 0.9, 6.0)]
    shapes = [(300, 300, 20)] * 4
    t = pp.median_target_spacing(spacings, shapes)
    assert t[:2] == [0.8, 0.8]
    assert t[2] == pytest.approx(np.percentile([5.0, 5.0, 3.0, 6.0], 10))
    assert pp.median_target_spacing(spacings, [(60, 60, 50)] * 4)[2] == 5.0  # not thin enough: median


def test_initial_patch_size_is_enlarged():
    assert pp.initial_patch_size((128, 128, 128)) == [int(128 * (np.cos(np.pi / 6) + np.sin(np.pi / 6)) / 0.85)] * 3


def test_revert_to_original_geometry():
    spacing = (0.7, 0.8, 2.0)
    shape = (64, 56, 24)
    lab = _objects(shape, spacing)
    image = np.zeros((1,) + shape, np.float32)
    image[0, 4:60, 3:50, 2:22] = 1 + lab[4:60, 3:50, 2:22]  # nonzero box smaller than the volume: a real crop
    lab_in = np.where(image[0] > 0, lab, 0)
    plans = dict(target_spacing=[1.0, 1.0, 1.0], normalization=["ZScore"], use_mask_for_norm=[False])
    data, seg, props = pp.preprocess_arrays(image, lab_in, spacing, plans)
    assert props["bbox"] == [[4, 60], [3, 50], [2, 22]]
    assert list(data.shape[1:]) == pp.new_shape([56, 47, 20], spacing, [1, 1, 1])
    onehot = np.stack([(seg == k) for k in range(4)]).astype(np.float32)
    back = pp.revert_to_original(onehot, props, plans)
    assert back.shape == shape
    for k in (1, 2, 3):
        assert _dice(lab_in == k, back == k) >= 0.95, k
    with pytest.raises(ValueError, match="resampled"):
        pp.revert_to_original(onehot[:, :-1], props, plans)


def _stored_as(image, lab, spacing, perm, flips):
    """The same volume stored with its voxel axes permuted and flipped; (image, label, spacing, affine)."""
    img, seg = np.transpose(image, (0,) + tuple(p + 1 for p in perm)), np.transpose(lab, perm)
    affine = np.zeros((4, 4))
    affine[3, 3] = 1
    for file_axis, world_axis in enumerate(perm):
        affine[world_axis, file_axis] = spacing[world_axis] * (-1 if flips[file_axis] else 1)
    for file_axis, flip in enumerate(flips):
        if flip:
            img, seg = np.flip(img, file_axis + 1), np.flip(seg, file_axis)
    return np.ascontiguousarray(img), np.ascontiguousarray(seg), [spacing[p] for p in perm], affine


@pytest.mark.parametrize("perm,flips", [((0, 1, 2), (0, 0, 0)), ((2, 0, 1), (1, 0, 1)), ((1, 2, 0), (0, 1, 0))])
def test_any_axis_order_preprocesses_alike_and_reverts_to_the_file_order(perm, flips):
    spacing = (0.7, 0.8, 2.0)
    shape = (64, 56, 24)
    lab = _objects(shape, spacing)
    image = np.zeros((1,) + shape, np.float32)
    image[0, 4:60, 3:50, 2:22] = 1 + lab[4:60, 3:50, 2:22]
    lab = np.where(image[0] > 0, lab, 0)
    plans = dict(orientation=pp.CANONICAL, target_spacing=[1.0, 1.0, 1.0], normalization=["ZScore"],
                 use_mask_for_norm=[False])
    ras = pp.preprocess_arrays(image, lab, spacing, plans, np.diag(list(spacing) + [1.0]))
    img2, lab2, spacing2, affine2 = _stored_as(image, lab, spacing, perm, flips)
    assert pp.reorient_geometry(spacing2, pp.to_canonical(affine2)) == list(spacing)
    data, seg, props = pp.preprocess_arrays(img2, lab2, spacing2, plans, affine2)
    np.testing.assert_array_equal(data, ras[0])   # the model sees the same array, whatever the file's order
    np.testing.assert_array_equal(seg, ras[1])
    onehot = np.stack([(seg == k) for k in range(4)]).astype(np.float32)
    back = pp.revert_to_original(onehot, props, plans)
    assert back.shape == lab2.shape              # ... and the prediction comes back in the file's order
    for k in (1, 2, 3):
        assert _dice(lab2 == k, back == k) >= 0.95, k


def test_plans_without_orientation_keep_the_file_order():
    """A run planned before reorientation (no plans['orientation']) predicts as it was trained."""
    image = np.random.default_rng(0).random((1, 20, 18, 16)).astype(np.float32) + 1
    plans = dict(target_spacing=[1.0, 1.0, 1.0], normalization=["ZScore"], use_mask_for_norm=[False])
    flipped = np.diag([-1.0, 1, 1, 1])
    data, _, props = pp.preprocess_arrays(image, None, (1, 1, 1), plans, flipped)
    np.testing.assert_allclose(data[0], (image[0] - image.mean()) / image.std(), rtol=1e-5, atol=1e-5)
    assert props["orientation"] is None
    data, _, props = pp.preprocess_arrays(image, None, (1, 1, 1), dict(plans, orientation=pp.CANONICAL), flipped)
    np.testing.assert_allclose(data[0], (image[0, ::-1] - image.mean()) / image.std(), rtol=1e-5, atol=1e-5)
