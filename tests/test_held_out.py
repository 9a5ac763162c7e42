"""The learning benchmark's held-out cases (benchmarks/held_out.py): geometry kept, warp reproducible."""
import os

import numpy as np
import pytest

from benchmarks import held_out
from mednext_fast.train import colin27, inia19


def test_pil_copy_puts_every_voxel_at_its_world_position():
    rng = np.random.default_rng(0)
    image = rng.random((7, 9, 5))
    affine = np.array([[1.0, 0, 0, -10], [0, 1.2, 0, 5], [0, 0, 0.9, 3], [0, 0, 0, 1]])
    out, new = held_out.as_pil(image, affine)
    import nibabel
    assert nibabel.aff2axcodes(new) == ("P", "I", "L")
    for index in rng.integers(0, image.shape, size=(20, 3)):
        world = affine @ np.r_[index, 1]
        j = np.round(np.linalg.solve(new, world)[:3]).astype(int)
        assert out[tuple(j)] == image[tuple(index)]


def test_warp_is_reproducible_and_keeps_a_plausible_mask():
    yy = np.stack(np.meshgrid(*[np.arange(40)] * 3, indexing="ij"))
    mask = (((yy - 20) / np.array([12, 14, 10])[:, None, None, None]) ** 2).sum(0) <= 1
    image = np.where(mask, 100.0, 20.0)
    a, ma = held_out.warp(image, mask)
    b, mb = held_out.warp(image, mask)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ma, mb)
    assert 0.7 < ma.sum() / mask.sum() < 1.3 and (ma != mask).any()  # moved, not lost


@pytest.mark.skipif(not (colin27.available() and inia19.available()), reason="mricron-data not installed")
def test_write_cases(tmp_path):
    cases = held_out.write_cases(str(tmp_path), log=lambda *_: None)
    assert {"inia19", "colin27-warped", "colin27-PIL", "colin27-stripped"} <= set(cases)
    assert set(cases) <= set(held_out.CASES)
    for name, (images, _) in cases.items():  # the learning benchmark finds each prediction by the case's name
        assert os.listdir(images) == [f"{name}_0000.nii.gz"]
