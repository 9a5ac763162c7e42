"""Deterministic 3-D phantom datasets in nnU-Net v2 raw format (no user data needed).

Each case is a 'body' (ellipsoid, zero/air outside) holding three classes:
1 ``organ`` (ellipsoid), 2 ``vessel`` (tube along a curved centre line), 3 ``lesion`` (textured blob:
thresholded smoothed noise inside the organ). Variants:

* ``mr``    one channel "T2"-like: positive intensities, smooth bias field, noise, exactly 0 outside the body
* ``ct``    one channel "CT": Hounsfield-like values (air -1000, fat -100, soft tissue 40, organ 60,
            contrast vessel 250, lesion 10) -> exercises CT normalisation
* ``aniso`` as ``mr`` with thick slices (0.8 x 0.8 x 4 mm) -> exercises the separate-z rule

Public API: ``write_synthetic_dataset(out_dir, kind="mr", n_cases=4, shape=None, seed=0) -> out_dir``,
``make_case(kind, shape, spacing, rng) -> (image, label)``. Same arguments -> identical arrays and affines.
"""
from __future__ import annotations

import os

import numpy as np
from scipy import ndimage

from mednext_fast.atomic import write_json
from mednext_fast.train import dataset_io as dio

LABELS = {"background": 0, "organ": 1, "vessel": 2, "lesion": 3}
KINDS = {
    "mr": dict(channel="T2", spacing=(1.0, 1.0, 1.0), shape=(64, 64, 64)),
    "ct": dict(channel="CT", spacing=(1.0, 1.0, 1.5), shape=(64, 64, 48)),
    "aniso": dict(channel="T2", spacing=(0.8, 0.8, 4.0), shape=(80, 80, 16)),
}


def make_case(kind: str, shape, spacing, rng: np.random.Generator):
    """(image float32, label uint8) of one phantom; sizes are in mm so variants look alike."""
    if kind not in KINDS:
        raise ValueError(f"unknown synthetic kind {kind!r}; choose from {sorted(KINDS)}")
    shape = tuple(int(s) for s in shape)
    mm = np.stack(np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(shape, spacing)], indexing="ij"))
    extent = np.array([n * s for n, s in zip(shape, spacing)])[:, None, None, None]

    def ellipsoid(centre, radii):
        return (((mm - centre[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(0) <= 1.0

    ext = extent[:, 0, 0, 0]
    body = ellipsoid(ext / 2 + rng.uniform(-0.03, 0.03, 3) * ext, ext * rng.uniform(0.40, 0.46, 3))
    organ_c = ext / 2 + rng.uniform(-0.1, 0.1, 3) * ext
    organ_r = ext * rng.uniform(0.14, 0.22, 3)
    organ = ellipsoid(organ_c, organ_r) & body
    # vessel: tube of radius ~2.5 mm around a sinusoidal centre line running along axis 0
    t = mm[0] / ext[0]
    cy = ext[1] * (0.5 + rng.uniform(0.1, 0.2) * np.sin(2 * np.pi * (t + rng.uniform())))
    cz = ext[2] * (0.5 + rng.uniform(-0.15, 0.15))
    vessel = ((mm[1] - cy) ** 2 + (mm[2] - cz) ** 2 <= rng.uniform(2.0, 3.0) ** 2) & body
    # lesion: smoothed noise thresholded inside a sub-ellipsoid of the organ (irregular, textured)
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=[2.0 / s for s in spacing])
    lesion = ellipsoid(organ_c + rng.uniform(-0.3, 0.3, 3) * organ_r, organ_r * 0.5) & organ & (noise > 0)
    label = np.zeros(shape, np.uint8)
    label[organ], label[vessel], label[lesion] = 1, 2, 3
    texture = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=[1.0 / s for s in spacing])

    if kind == "ct":
        hu = np.full(shape, -1000.0)
        hu[body] = 40.0
        fat = body & ~ellipsoid(ext / 2, ext * 0.36)  # subcutaneous fat rim
        hu[fat] = -100.0
        hu[label == 1], hu[label == 2], hu[label == 3] = 60.0, 250.0, 10.0
        image = hu + 15.0 * texture / max(texture.std(), 1e-12) * body + rng.normal(0, 12.0, shape)
        image = np.clip(image, -1024, 3071)
    else:
        field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=[12.0 / s for s in spacing])
        bias = 1.0 + 0.15 * field / max(field.std(), 1e-12)  # smooth multiplicative MR bias field, ~15 %
        base = np.select([label == 1, label == 2, label == 3], [300.0, 600.0, 180.0], 220.0)
        texture = texture / max(texture.std(), 1e-12)
        image = base * np.clip(bias, 0.5, 1.5) + 25.0 * texture + rng.normal(0, 15.0, shape)
        image = np.where(body, np.clip(image, 1.0, None), 0.0)  # exactly 0 outside: crop-to-nonzero has work
    return image.astype(np.float32), label


def write_synthetic_dataset(out_dir: str, kind: str = "mr", n_cases: int = 4, shape=None, seed: int = 0) -> str:
    """Write ``n_cases`` phantoms of ``kind`` as a v2 raw dataset into ``out_dir``; returns ``out_dir``."""
    if kind not in KINDS:
        raise ValueError(f"unknown synthetic kind {kind!r}; choose from {sorted(KINDS)}")
    if n_cases < 1:
        raise ValueError(f"n_cases must be >= 1, got {n_cases}")
    cfg = KINDS[kind]
    shape = tuple(shape or cfg["shape"])
    spacing = cfg["spacing"]
    for i in range(n_cases):
        rng = np.random.default_rng([seed, i])  # per case: any case is reproducible on its own
        image, label = make_case(kind, shape, spacing, rng)
        affine = np.diag(list(spacing) + [1.0])
        affine[:3, 3] = [-(n * s) / 2 for n, s in zip(shape, spacing)]
        name = f"{kind}_{i:03d}"
        dio.write_volume(image, affine, os.path.join(out_dir, "imagesTr", f"{name}_0000.nii.gz"))
        dio.write_volume(label, affine, os.path.join(out_dir, "labelsTr", f"{name}.nii.gz"))
    meta = dict(name=f"synthetic_{kind}", description=f"mednext_fast synthetic phantoms ({kind}), seed {seed}",
                channel_names={"0": cfg["channel"]}, labels=dict(LABELS), numTraining=n_cases,
                file_ending=".nii.gz", licence="generated")
    write_json(os.path.join(out_dir, "dataset.json"), meta)
    return out_dir
