"""Patch sampling: foreground oversampling rate, padding values, seeding; synthetic data determinism."""
import os

import numpy as np
import pytest
import torch

from mednext_fast.atomic import write_json
from mednext_fast.train import dataset_io as dio
from mednext_fast.train import preprocess as pp
from mednext_fast.train import sampling
from mednext_fast.train import synthetic


@pytest.fixture(scope="module")
def sparse_fg(tmp_path_factory):
    """Two 40^3 cases whose foreground is a single 3^3 cube: random patch centres almost never hit it."""
    root = str(tmp_path_factory.mktemp("sparse") / "raw")
    rng = np.random.default_rng(0)
    for i, c in enumerate([(12, 20, 25), (27, 14, 18)]):
        img = rng.normal(100, 5, (40, 40, 40)).astype(np.float32)
        lab = np.zeros(img.shape, np.uint8)
        lab[c[0]:c[0] + 3, c[1]:c[1] + 3, c[2]:c[2] + 3] = 1 + i % 2
        dio.write_volume(img, np.eye(4), os.path.join(root, "imagesTr", f"s{i}_0000.nii.gz"))
        dio.write_volume(lab, np.eye(4), os.path.join(root, "labelsTr", f"s{i}.nii.gz"))
    write_json(os.path.join(root, "dataset.json"), dict(channel_names={"0": "MR"},
                                                        labels={"background": 0, "a": 1, "b": 2}, numTraining=2,
                                                        file_ending=".nii.gz"))
    out = str(tmp_path_factory.mktemp("sparse_pp"))
    pp.prepare_dataset(root, out, workers=0, progress=False, patch_size=(16, 16, 16), batch_size=3)
    return out


def _centre_is_fg(ds, rng, force):
    x, y, centre = ds.sample(rng, force)
    p = ds.initial
    return y[0, p[0] // 2, p[1] // 2, p[2] // 2] > 0, x, y


def test_about_one_third_of_patches_centred_on_foreground(sparse_fg):
    # nnU-Net's per-index rule with batch 3: exactly the last sample of each batch is forced
    ds = sampling.PatchDataset(sparse_fg, seed=0)
    assert ds.batch_size == 3 and ds.initial == pp.initial_patch_size((16, 16, 16))
    hits = []
    rng = np.random.default_rng(1)
    for _ in range(200):
        x, y = ds.batch(rng)
        c = [p // 2 for p in ds.initial]
        hits += [bool(y[b, 0, c[0], c[1], c[2]] > 0) for b in range(3)]
    frac = np.mean(hits)
    assert abs(frac - 1 / 3) < 0.03, frac
    assert np.mean(hits[2::3]) == 1.0  # every forced sample is centred on foreground
    # probabilistic mode: each sample forced with p = 0.33 (batch 2 here)
    ds = sampling.PatchDataset(sparse_fg, batch_size=2, oversample_mode="probabilistic", seed=0)
    hits = [bool(_centre_is_fg(ds, rng, ds._force_fg(i % 2, rng))[0]) for i in range(1200)]
    assert abs(np.mean(hits) - 0.33) < 4.5 * np.sqrt(0.33 * 0.67 / 1200), np.mean(hits)


def test_patch_padding_and_types(sparse_fg):
    ds = sampling.PatchDataset(sparse_fg, batch_size=2, patch_size=(48, 48, 48), initial_patch_size=(56, 56, 56))
    x, y = ds.batch(np.random.default_rng(0))
    assert x.dtype == torch.float32 and y.dtype == torch.int16
    assert x.shape == (2, 1, 56, 56, 56) and y.shape == (2, 1, 56, 56, 56)
    # the 40^3 case is smaller than the patch: padding present, image 0 and label -1 there
    pad = y == -1
    assert pad.any() and (x[pad.expand_as(x)] == 0).all() and y.min() == -1
    assert set(torch.unique(y).tolist()) <= {-1, 0, 1, 2}
    arr = np.arange(24).reshape(2, 3, 4)
    out = sampling.crop_padded(arr, (-1, 1, 2), (2, 3, 3), -7)
    assert out[0].tolist() == [[-7] * 3] * 3 and out[1].tolist() == [[6, 7, -7], [10, 11, -7], [-7, -7, -7]]


def test_loader_is_infinite_and_seeded_per_worker_and_rank(sparse_fg):
    def first(loader, n=3):
        it = iter(loader)
        return [next(it) for _ in range(n)]

    a = first(sampling.make_loader(sparse_fg, num_workers=0, seed=5))
    b = first(sampling.make_loader(sparse_fg, num_workers=0, seed=5))
    c = first(sampling.make_loader(sparse_fg, num_workers=0, seed=5, rank=1))
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a, b))
    assert not all(torch.equal(p[0], q[0]) for p, q in zip(a, c))
    # two worker processes: 4 batches (2 per worker, interleaved) and the two workers differ
    w = first(sampling.make_loader(sparse_fg, num_workers=2, seed=5, batch_size=1), n=4)
    assert not torch.equal(w[0][0], w[1][0])
    with pytest.raises(ValueError, match="not in"):
        sampling.PatchDataset(sparse_fg, cases=["nope"])


def test_synthetic_dataset_is_deterministic(tmp_path):
    import nibabel as nib
    for kind in ("mr", "ct", "aniso"):
        a = synthetic.write_synthetic_dataset(str(tmp_path / f"a_{kind}"), kind, n_cases=2, shape=(20, 22, 12), seed=3)
        b = synthetic.write_synthetic_dataset(str(tmp_path / f"b_{kind}"), kind, n_cases=2, shape=(20, 22, 12), seed=3)
        c = synthetic.write_synthetic_dataset(str(tmp_path / f"c_{kind}"), kind, n_cases=2, shape=(20, 22, 12), seed=4)
        assert dio.validate_dataset(a) == [f"{kind}_000", f"{kind}_001"]
        for sub, name in (("imagesTr", f"{kind}_001_0000.nii.gz"), ("labelsTr", f"{kind}_001.nii.gz")):
            ia, ib, ic = (nib.load(os.path.join(r, sub, name)) for r in (a, b, c))
            assert np.array_equal(ia.get_fdata(), ib.get_fdata()) and np.array_equal(ia.affine, ib.affine)
            assert not np.array_equal(ia.get_fdata(), ic.get_fdata())
        lab = nib.load(os.path.join(a, "labelsTr", f"{kind}_000.nii.gz")).get_fdata()
        assert set(np.unique(lab)) == {0, 1, 2, 3}
    ct = nib.load(os.path.join(tmp_path, "a_ct", "imagesTr", "ct_000_0000.nii.gz")).get_fdata()
    assert ct.min() < -900 and ct.max() > 150  # Hounsfield-like: air and contrast-filled vessel
    image = nib.load(os.path.join(tmp_path, "a_aniso", "imagesTr", "aniso_000_0000.nii.gz"))
    assert image.header.get_zooms() == (0.8, 0.8, 4.0)


def test_augment_in_worker_yields_training_ready_batches(sparse_fg):
    loader = sampling.make_loader(sparse_fg, num_workers=0, batch_size=2, augment_in_worker=True, seed=1)
    image, pyramid = next(iter(loader))
    assert image.shape == (2, 1, 16, 16, 16) and image.dtype == torch.float32
    assert [tuple(t.shape[2:]) for t in pyramid] == [(16,) * 3, (8,) * 3, (4,) * 3, (2,) * 3, (1,) * 3]
    assert pyramid[0].min() >= 0 and pyramid[0].dtype == torch.int64
