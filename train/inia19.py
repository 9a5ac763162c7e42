"""A second real subject for held-out brain-extraction checks: the INIA19 rhesus-macaque template T1 from
Debian's ``mricron-data`` (``inia19-t1-brain.nii.gz``, 168x206x128 at 0.5 mm; install as for ``colin27``).

The file is skull-stripped, so its nonzero voxels are the brain mask. A macaque brain spans about half an adult
human brain's extent; ``write_test_case`` therefore declares 1 mm voxels by default (``human_scale``), so a model
trained on Colin27 meets the brain at the scale it learned: the check is one of appearance, contrast and shape,
not of a species' size. ``human_scale=False`` keeps the true 0.5 mm.

Public API: ``available() -> bool``, ``write_test_case(out_dir, human_scale=True) -> (images_dir, label_path)``.
"""
from __future__ import annotations

import os

import numpy as np

from mednext_fast.train import colin27
from mednext_fast.train import dataset_io as dio

FILE = "inia19-t1-brain.nii.gz"
CASE = "inia19"


def available(templates: str | None = None) -> bool:
    return os.path.isfile(os.path.join(templates or colin27.TEMPLATES, FILE))


def write_test_case(out_dir: str, human_scale: bool = True, templates: str | None = None):
    """Write ``out_dir``/images/inia19_0000.nii.gz and its brain mask ``out_dir``/labels/inia19.nii.gz."""
    folder = templates or colin27.TEMPLATES
    if not available(folder):
        raise colin27.Colin27Unavailable(colin27.INSTALL_HINT.replace(", ".join(colin27.FILES), FILE)
                                         + f" (looked in {folder})")
    image, affine, _ = dio.read_volume(os.path.join(folder, FILE))
    affine = np.array(affine, dtype=float)
    if human_scale:
        affine[:3, :3] *= 1.0 / np.linalg.norm(affine[:3, :3], axis=0)  # unit voxel size, same orientation
    images = os.path.join(out_dir, "images")
    label = os.path.join(out_dir, "labels", f"{CASE}.nii.gz")
    dio.write_volume(image, affine, os.path.join(images, f"{CASE}_0000.nii.gz"))
    dio.write_volume((image > 0).astype(np.uint8), affine, label)
    return images, label
