"""Held-out brain-extraction cases for a model trained on the whole Colin27 head (the learning benchmark's
``colin27-head-inia19`` task). Each case is an image and its brain mask on the image's grid; each says what
it tests, since only one of them is another human and none is a human head with its skull:

  inia19          another subject: the INIA19 macaque template at human scale (skull-stripped), mricron-data
  mni152          the MNI ICBM152 2009a template, the average of 152 adult heads (skull-stripped); found in an
                  installed nilearn package (``pip install --no-deps nilearn``) or at ``$MNI152_T1``, else
                  skipped
  colin27-warped  the training head under a smooth random warp (about 4 mm), an anisotropic rescale
                  (0.93-1.04), an 8 degree rotation, a smooth bias field, a gamma of 0.8 and noise: the same
                  anatomy, another head shape and acquisition
  colin27-PIL     the training head stored in another voxel order (P-I-L, as a sagittal scan may come):
                  tests the reorientation, should match the training head's own Dice
  colin27-stripped  the training head with everything outside the brain set to 0: how much the model leans
                  on the skull around the brain (the two templates above are stripped the same way)

Public API: ``CASES``, ``write_cases(out_dir) -> {name: (images_dir, label_path)}``; each images_dir holds
the one file ``<name>_0000.nii.gz`` (cases whose source is missing are left out, with a line saying why).
"""
from __future__ import annotations

import importlib.util
import os

import numpy as np
from scipy import ndimage

from mednext_fast.train import colin27, inia19
from mednext_fast.train import dataset_io as dio

CASES = ("inia19", "mni152", "colin27-warped", "colin27-PIL", "colin27-stripped")
MNI152_FILE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
WARP_SEED = 7


def _mni152_path() -> str | None:
    if os.environ.get("MNI152_T1"):
        return os.environ["MNI152_T1"]
    spec = importlib.util.find_spec("nilearn")  # the file only: nilearn itself is never imported
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data", MNI152_FILE)
    return path if os.path.isfile(path) else None


def _write(out_dir: str, name: str, image: np.ndarray, mask: np.ndarray, affine) -> tuple:
    images = os.path.join(out_dir, name, "images")
    label = os.path.join(out_dir, name, "label.nii.gz")
    dio.write_volume(image.astype(np.float32), affine, os.path.join(images, f"{name}_0000.nii.gz"))
    dio.write_volume(mask.astype(np.uint8), affine, label)
    return images, label


def warp(image: np.ndarray, mask: np.ndarray, seed: int = WARP_SEED):
    """(image, mask) under a smooth random warp, rescale and rotation, with a bias field, gamma and noise."""
    rng = np.random.default_rng(seed)
    shape = np.array(image.shape)
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))
    centre = (shape - 1)[:, None, None, None] / 2
    angle = np.deg2rad(8)
    rotation = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    inverse_scale = np.diag([1 / 0.93, 1 / 1.04, 1 / 0.96])
    source = np.einsum("ij,jxyz->ixyz", rotation @ inverse_scale, grid - centre) + centre

    def smooth(n, std):  # a random field on an n^3 lattice, cubic-interpolated to the image
        return ndimage.zoom(rng.normal(0, std, (n, n, n)), shape / n, order=3)[:shape[0], :shape[1], :shape[2]]

    for axis in range(3):
        source[axis] += smooth(5, 4.0)
    warped = ndimage.map_coordinates(image.astype(np.float32), source, order=1, mode="constant")
    warped_mask = ndimage.map_coordinates(mask.astype(np.uint8), source, order=0, mode="constant")
    warped = warped * np.exp(smooth(3, 0.12))
    warped = 255 * (warped / warped.max()) ** 0.8 + rng.normal(0, 3, warped.shape)
    return np.clip(warped, 0, None), warped_mask


def as_pil(image: np.ndarray, affine):
    """The same volume stored in P-I-L voxel order: (array, affine) that place every voxel where it was."""
    perm = (1, 2, 0)  # file axis i holds world axis perm[i], each reversed
    out = np.ascontiguousarray(np.flip(np.transpose(image, perm), (0, 1, 2)))
    affine = np.asarray(affine, dtype=float)
    new = np.eye(4)
    for file_axis, axis in enumerate(perm):
        new[:3, file_axis] = -affine[:3, axis]
    new[:3, 3] = affine[:3, :3] @ (np.array(image.shape) - 1) + affine[:3, 3]  # the old last voxel is first
    return out, new


def write_cases(out_dir: str, log=print) -> dict:
    t1, label, affine = colin27.build_label()
    brain = label > 0
    cases = {}
    if inia19.available():
        images, mask = inia19.write_test_case(os.path.join(out_dir, "inia19"))
        cases["inia19"] = (images, mask)
    else:
        log(f"held-out inia19 skipped: {inia19.FILE} not found (mricron-data)")
    mni = _mni152_path()
    if mni:
        image, mni_affine, _ = dio.read_volume(mni)
        cases["mni152"] = _write(out_dir, "mni152", image, image > 0, mni_affine)
    else:
        log(f"held-out mni152 skipped: no nilearn package with {MNI152_FILE} and no $MNI152_T1")
    cases["colin27-warped"] = _write(out_dir, "colin27-warped", *warp(t1, brain), affine)
    image, pil_affine = as_pil(t1, affine)
    cases["colin27-PIL"] = _write(out_dir, "colin27-PIL", image, as_pil(brain, affine)[0], pil_affine)
    cases["colin27-stripped"] = _write(out_dir, "colin27-stripped", np.where(brain, t1, 0), brain, affine)
    return cases
