"""nnU-Net-style preprocessing: fingerprint -> plans -> per-case crop, normalise, resample; cached on disk.

Order per case: reorient -> crop to nonzero -> normalise -> resample (nnU-Net v2's, after its reader). Numbers follow
shared/reference/nnunet-conventions-and-data.md section 2.2. Differences from nnU-Net, on purpose:
arrays are brought to the voxel order closest to RAS before anything else (nnU-Net's default reader keeps the
file's order, its ``NibabelIOWithReorient`` does this; a model trained on one subject would otherwise meet
another subject stored in another axis order as an unseen, transposed image), and every prediction is put back
into the file's own voxel order; no further axis transposition; the default target spacing is 1.0 mm
isotropic as in the MedNeXt paper (``target_spacing="median"`` gives nnU-Net's median/anisotropy rule);
the fingerprint uses *all* foreground voxels of a case when it has at most ``n_samples`` of them
(nnU-Net samples with replacement; exact statistics are strictly better and equal in expectation).

Output folder (``out_dir``)::

    fingerprint.json  plans.json
    data/{case}.npy        float32 (C, X, Y, Z), memory-mappable (np.load(..., mmap_mode='r'))
    data/{case}_seg.npy    int8/int16 (X, Y, Z): class ids, -1 outside the nonzero mask
    data/{case}_locs.npz   {"class_<k>": (N, 3) int32 voxel indices}, for foreground oversampling
    data/{case}.json       properties (original geometry, crop box, shapes, cache hash)

Public API
----------
``prepare_dataset(raw_dir, out_dir, workers=2, target_spacing=(1.0, 1.0, 1.0), patch_size=(128, 128, 128),
                  batch_size=2, force=False, progress=True) -> plans dict``
``load_plans(out_dir) -> dict``;  ``load_case(out_dir, case, mmap=True) -> (image, seg, locations, props)``
``preprocess_arrays(image, label, spacing, plans, affine=None) -> (image, seg, props)``  (inference: label=None)
``revert_to_original(probabilities (K, *resampled), props, plans) -> label map`` in the original geometry
``to_canonical(affine) -> ornt``, ``reorient``, ``reorient_geometry``, ``inverse_orientation``,
``crop_to_nonzero``, ``normalize``, ``resample_image``, ``resample_seg``, ``new_shape``, ``separate_z_axis``,
``fingerprint_dataset``, ``compute_fingerprint``, ``make_plans``, ``median_target_spacing``
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
import multiprocessing as mp

import numpy as np
from scipy import ndimage

from mednext_fast.atomic import write_json, write_via
from mednext_fast.train import dataset_io as dio
from mednext_fast.train.augment import AugmentConfig

PLANS_VERSION = 2              # 2: arrays reoriented to the closest RAS voxel order (plans["orientation"])
CANONICAL = "RAS"
ANISO_THRESHOLD = 3.0          # nnU-Net's ANISO_THRESHOLD (separate-z and target-spacing rules)
FINGERPRINT_SAMPLES = 10000    # foreground voxels per case and channel
FINGERPRINT_SEED = 1234
LOCATION_SAMPLES = 10000       # stored voxels per class (at least 1 % of the class)
LOCATION_MIN_FRACTION = 0.01
SCALE_RANGE_FOR_PATCH = (0.85, 1.25)  # nnU-Net v2 enlarges the patch with this range, not the DA's 0.7-1.4


# ---------------------------------------------------------------------------------------------------
# Orientation
# ---------------------------------------------------------------------------------------------------
def to_canonical(affine) -> np.ndarray:
    """nibabel orientation (3, 2) taking the voxel axes of ``affine`` to the closest RAS order: row i says
    which axis file axis i becomes and whether it is flipped (-1); the identity for a RAS file."""
    from nibabel import orientations
    return orientations.io_orientation(np.asarray(affine, dtype=float))


def inverse_orientation(ornt) -> np.ndarray:
    """The orientation that undoes ``ornt`` (RAS order back to the file's)."""
    from nibabel import orientations
    return orientations.ornt_transform(orientations.axcodes2ornt(CANONICAL), np.asarray(ornt, float))


def reorient(array: np.ndarray, ornt) -> np.ndarray:
    """``array`` (..., X, Y, Z) with its last three axes permuted and flipped by ``ornt`` (a copy)."""
    from nibabel import orientations
    lead = array.ndim - 3
    moved = np.moveaxis(array, list(range(lead)), list(range(3, 3 + lead)))  # spatial axes first
    out = orientations.apply_orientation(moved, np.asarray(ornt, float))
    return np.ascontiguousarray(np.moveaxis(out, list(range(3, 3 + lead)), list(range(lead))))


def reorient_geometry(values, ornt) -> list:
    """Per-axis values (spacing, shape) in the order ``ornt`` gives the axes."""
    out = [None] * 3
    for axis, (target, _) in enumerate(np.asarray(ornt)):
        out[int(target)] = values[axis]
    return out


# ---------------------------------------------------------------------------------------------------
# Crop, normalise, resample
# ---------------------------------------------------------------------------------------------------
def crop_to_nonzero(image: np.ndarray, label: np.ndarray | None = None):
    """Crop (C, X, Y, Z) to the bounding box of 'any channel != 0' (holes filled).

    Returns (image, seg, bbox); seg is the cropped label (or zeros) with -1 where it is background and
    outside the nonzero mask, which is how nnU-Net marks the region for use_mask_for_norm and padding.
    """
    nonzero = ndimage.binary_fill_holes(np.any(image != 0, axis=0))
    if nonzero.any():
        idx = np.argwhere(nonzero)
        bbox = [[int(a), int(b) + 1] for a, b in zip(idx.min(0), idx.max(0))]
    else:  # an all-zero image: keep everything rather than crop to nothing
        bbox = [[0, s] for s in image.shape[1:]]
    sl = tuple(slice(a, b) for a, b in bbox)
    image = image[(slice(None),) + sl]
    mask = nonzero[sl]
    seg = np.zeros(mask.shape, np.int16) if label is None else label[sl].astype(np.int16)
    seg[(seg == 0) & ~mask] = -1
    return image, seg, bbox


def normalize(image: np.ndarray, seg: np.ndarray, plans: dict) -> np.ndarray:
    """Per-channel normalisation chosen from plans['normalization'] (float32 copy)."""
    out = np.empty(image.shape, np.float32)
    for c in range(image.shape[0]):
        x = image[c].astype(np.float64)
        scheme = plans["normalization"][c]
        if scheme == "CT":
            props = plans["foreground_intensity_properties"][str(c)]
            x = np.clip(x, props["percentile_00_5"], props["percentile_99_5"])
            x = (x - props["mean"]) / max(props["std"], 1e-8)
        elif scheme == "ZScore":
            if plans["use_mask_for_norm"][c]:
                mask = seg >= 0
                vals = x[mask]
                mean, std = (vals.mean(), vals.std()) if vals.size else (0.0, 1.0)
                x = np.where(mask, (x - mean) / max(std, 1e-8), 0.0)
            else:
                x = (x - x.mean()) / max(x.std(), 1e-8)
        elif scheme == "RescaleTo01":
            lo, hi = x.min(), x.max()
            x = (x - lo) / max(hi - lo, 1e-8)
        elif scheme == "RGBTo01":
            x = x / 255.0
        elif scheme == "NoNorm":
            pass
        else:
            raise ValueError(f"unknown normalisation scheme {scheme!r} for channel {c}")
        out[c] = x
    return out


def normalization_scheme(channel_name: str) -> str:
    """nnU-Net's channel-name -> scheme map (case-insensitive); anything unknown is ZScore."""
    key = channel_name.strip().lower()
    return {"ct": "CT", "nonorm": "NoNorm", "zscore": "ZScore", "rescale_to_0_1": "RescaleTo01",
            "rgb_to_0_1": "RGBTo01"}.get(key, "ZScore")


def new_shape(shape, old_spacing, new_spacing) -> list:
    """round(old_spacing / new_spacing * old_shape) per axis (at least 1)."""
    return [max(int(round(s / t * n)), 1) for n, s, t in zip(shape, old_spacing, new_spacing)]


def separate_z_axis(old_spacing, new_spacing):
    """The coarse axis to resample with order 0 (nnU-Net's separate-z rule), or None.

    Looks at the current spacing first, then the target: if max/min > 3 and exactly one axis has the
    largest spacing, that axis is resampled separately; with 2 or 3 equally coarse axes there is none.
    """
    for sp in (np.asarray(old_spacing, float), np.asarray(new_spacing, float)):
        if sp.max() / sp.min() > ANISO_THRESHOLD:
            axes = np.flatnonzero(np.isclose(sp, sp.max()))
            return int(axes[0]) if len(axes) == 1 else None
    return None


def _zoom(x: np.ndarray, shape, order: int, skip_axis=None) -> np.ndarray:
    factors = [1.0 if a == skip_axis else n / o for a, (n, o) in enumerate(zip(shape, x.shape))]
    if all(f == 1.0 for f in factors):
        return x
    # grid_mode=True: voxel-centre alignment like skimage.resize; 'nearest' = skimage's mode='edge'
    return ndimage.zoom(x, factors, order=order, mode="nearest", grid_mode=True, prefilter=order > 1)


def _nearest_along(x: np.ndarray, axis: int, n: int) -> np.ndarray:
    """Order-0 resampling along one axis with voxel-centre alignment."""
    old = x.shape[axis]
    if old == n:
        return x
    idx = np.minimum(((np.arange(n) + 0.5) * old / n).astype(np.int64), old - 1)
    return np.take(x, idx, axis=axis)


def resample_image(image: np.ndarray, old_spacing, new_spacing, shape=None, order: int = 3) -> np.ndarray:
    """(C, X, Y, Z) float -> resampled float32: cubic spline (order 3), order 0 along a separate-z axis."""
    shape = list(shape) if shape is not None else new_shape(image.shape[1:], old_spacing, new_spacing)
    axis = separate_z_axis(old_spacing, new_spacing)
    out = []
    for c in range(image.shape[0]):
        x = _zoom(image[c].astype(np.float32, copy=False), shape, order, skip_axis=axis)
        if axis is not None:
            x = _nearest_along(x, axis, shape[axis])
        out.append(x.astype(np.float32, copy=False))
    return np.stack(out)


def resample_seg(seg: np.ndarray, old_spacing, new_spacing, shape=None) -> np.ndarray:
    """(X, Y, Z) int -> resampled: each label's mask linearly resampled, >= 0.5 wins, later labels overwrite."""
    shape = list(shape) if shape is not None else new_shape(seg.shape, old_spacing, new_spacing)
    if list(seg.shape) == shape:
        return seg.copy()
    axis = separate_z_axis(old_spacing, new_spacing)
    out = np.zeros(shape, seg.dtype)
    for value in np.unique(seg):
        if value == 0:
            continue
        m = _zoom((seg == value).astype(np.float32), shape, 1, skip_axis=axis)
        if axis is not None:
            m = _nearest_along(m, axis, shape[axis])
        out[m >= 0.5] = value
    return out


def preprocess_arrays(image: np.ndarray, label: np.ndarray | None, spacing, plans: dict, affine=None):
    """One case: reorient -> crop -> normalise -> resample to plans['target_spacing'].

    Returns (image float32 (C, *new), seg int16 (*new) with -1 outside the nonzero mask, props).
    With ``label=None`` (inference) seg only carries the mask (0 inside, -1 outside). The image is brought
    to the closest RAS voxel order when the plans ask for it (``plans["orientation"]``) and ``affine`` is
    given; props (shapes, spacing, crop box) are then in that order and ``orientation`` leads back.
    """
    if image.ndim != 4:
        raise ValueError(f"image must be (C, X, Y, Z), got shape {image.shape}")
    if label is not None and label.shape != image.shape[1:]:
        raise ValueError(f"label shape {label.shape} differs from image shape {image.shape[1:]}")
    ornt = to_canonical(affine) if affine is not None and plans.get("orientation") == CANONICAL else None
    if ornt is not None:
        image = reorient(image, ornt)
        label = None if label is None else reorient(label, ornt)
        spacing = reorient_geometry(list(spacing), ornt)
    cropped, seg, bbox = crop_to_nonzero(image, label)
    normed = normalize(cropped, seg, plans)
    target = plans["target_spacing"]
    shape = new_shape(cropped.shape[1:], spacing, target)
    data = resample_image(normed, spacing, target, shape) if shape != list(cropped.shape[1:]) else normed
    seg = resample_seg(seg, spacing, target, shape)
    props = dict(original_shape=list(image.shape[1:]), bbox=bbox, cropped_shape=list(cropped.shape[1:]),
                 original_spacing=[float(s) for s in spacing], resampled_shape=shape,
                 classes_present=[int(v) for v in np.unique(seg) if v > 0],
                 orientation=None if ornt is None else ornt.tolist())
    return data, seg, props


def revert_to_original(probabilities, props: dict, plans: dict) -> np.ndarray:
    """Class probabilities/logits (K, *resampled) -> label map (X, Y, Z) in the original geometry.

    nnU-Net's export: resample with order 1 (order 0 along a separate-z axis) to the cropped shape, argmax,
    put the crop back (outside = background), and return to the file's voxel order.
    """
    probs = np.asarray(probabilities.detach().cpu().float() if hasattr(probabilities, "detach") else probabilities,
                       dtype=np.float32)
    if list(probs.shape[1:]) != list(props["resampled_shape"]):
        raise ValueError(f"probabilities have spatial shape {list(probs.shape[1:])}, expected the resampled "
                         f"shape {props['resampled_shape']}")
    crop = props["cropped_shape"]
    if list(probs.shape[1:]) != list(crop):
        probs = resample_image(probs, plans["target_spacing"], props["original_spacing"], crop, order=1)
    out = np.zeros(props["original_shape"], np.int16)
    out[tuple(slice(a, b) for a, b in props["bbox"])] = probs.argmax(0)
    if props.get("orientation") is not None:
        out = reorient(out, inverse_orientation(props["orientation"]))
    return out


def class_locations(seg: np.ndarray, classes, seed: int = FINGERPRINT_SEED) -> dict:
    """{class: (N, 3) int32} with N = max(min(10000, n), ceil(1 % of n)) voxels drawn without replacement."""
    rng = np.random.default_rng(seed)
    out = {}
    for k in classes:
        idx = np.argwhere(seg == k)
        if len(idx) == 0:
            continue
        n = max(min(LOCATION_SAMPLES, len(idx)), int(math.ceil(len(idx) * LOCATION_MIN_FRACTION)))
        if n < len(idx):
            idx = idx[np.sort(rng.choice(len(idx), n, replace=False))]
        out[int(k)] = idx.astype(np.int32)
    return out


# ---------------------------------------------------------------------------------------------------
# Fingerprint and plans
# ---------------------------------------------------------------------------------------------------
def _fingerprint_case(root: str, meta: dict, case: str, n_samples: int):
    image, label, geom = dio.read_case(root, meta, case)   # also validates values
    ornt = to_canonical(geom["affine"])  # spacings and shapes in the order the plans use
    cropped, seg, _ = crop_to_nonzero(reorient(image, ornt), reorient(label, ornt))
    fg = seg > 0
    rng = np.random.default_rng([FINGERPRINT_SEED, _stable_int(case)])
    samples = []
    for c in range(cropped.shape[0]):
        vals = cropped[c][fg]
        if vals.size > n_samples:
            vals = vals[rng.integers(0, vals.size, n_samples)]
        samples.append(vals.astype(np.float64))
    return dict(case=case, spacing=reorient_geometry(geom["spacing"], ornt),
                shape=reorient_geometry(geom["shape"], ornt), shape_after_crop=list(seg.shape),
                relative_size_after_crop=float(np.prod(seg.shape) / np.prod(geom["shape"])), samples=samples)


def _stable_int(text: str) -> int:
    return int(hashlib.sha1(text.encode()).hexdigest()[:8], 16)


def _channel_stats(vals: np.ndarray) -> dict:
    if vals.size == 0:
        raise dio.DatasetError("no foreground voxels (label > 0) in any training case: cannot compute the "
                               "intensity fingerprint (needed for CT normalisation)")
    return dict(mean=float(vals.mean()), median=float(np.median(vals)), std=float(vals.std()),
                min=float(vals.min()), max=float(vals.max()),
                percentile_00_5=float(np.percentile(vals, 0.5)), percentile_99_5=float(np.percentile(vals, 99.5)))


def compute_fingerprint(root: str, meta: dict, cases: list, workers: int = 2, progress: bool = True,
                        n_samples: int = FINGERPRINT_SAMPLES) -> dict:
    results = _map(_fingerprint_case, [(root, meta, c, n_samples) for c in cases], workers, progress, "fingerprint")
    n_ch = len(meta["channel_names"])
    pooled = [np.concatenate([r["samples"][c] for r in results]) for c in range(n_ch)]
    has_ct = any(normalization_scheme(n) == "CT" for n in meta["channel_names"].values())
    props = {}
    for c in range(n_ch):
        if pooled[c].size or has_ct:
            props[str(c)] = _channel_stats(pooled[c])
    return dict(cases=[r["case"] for r in results], spacings=[r["spacing"] for r in results],
                shapes=[r["shape"] for r in results], shapes_after_crop=[r["shape_after_crop"] for r in results],
                relative_sizes_after_crop=[r["relative_size_after_crop"] for r in results],
                foreground_intensity_properties=props)


def median_target_spacing(spacings, shapes) -> list:
    """nnU-Net 3d_fullres: per-axis median spacing, with the 10th-percentile rule for one very coarse axis."""
    spacings, shapes = np.asarray(spacings, float), np.asarray(shapes, float)
    target = np.median(spacings, 0)
    median_shape = np.median(shapes, 0)
    worst = int(np.argmax(target))
    others = [a for a in range(len(target)) if a != worst]
    if target[worst] > ANISO_THRESHOLD * max(target[others]) and \
            median_shape[worst] * ANISO_THRESHOLD < min(median_shape[others]):
        target[worst] = max(np.percentile(spacings[:, worst], 10), max(target[others]) + 1e-5)
    return [float(t) for t in target]


def initial_patch_size(patch_size, rotation_deg: float = AugmentConfig.rotation_deg,
                       scale_range=SCALE_RANGE_FOR_PATCH) -> list:
    """Patch to cut before the spatial transform so rotation/scaling bring no empty corners (nnU-Net's rule:
    the corner vector rotated about each axis separately, axis-wise max, divided by the smallest scale).
    The rotation is the augmentation's own range."""
    p = np.asarray(patch_size, float)
    a = math.radians(rotation_deg)
    ext = p.copy()
    for axis in range(3):
        i, j = [k for k in range(3) if k != axis]
        for sign in (1, -1):
            v = p.copy()
            v[i] = p[i] * math.cos(a) - sign * p[j] * math.sin(a)
            v[j] = sign * p[i] * math.sin(a) + p[j] * math.cos(a)
            ext = np.maximum(ext, np.abs(v))
    return [int(e) for e in ext / min(scale_range)]


def make_plans(fingerprint: dict, meta: dict, target_spacing="1mm", patch_size=(128, 128, 128),
               batch_size: int = 2) -> dict:
    if target_spacing in ("1mm", None):
        target = [1.0, 1.0, 1.0]
    elif target_spacing == "median":
        target = median_target_spacing(fingerprint["spacings"], fingerprint["shapes"])
    else:
        target = [float(t) for t in target_spacing]
        if len(target) != 3 or min(target) <= 0:
            raise ValueError(f"target_spacing must be 3 positive numbers, '1mm' or 'median', got {target_spacing!r}")
    names = [meta["channel_names"][str(c)] for c in range(len(meta["channel_names"]))]
    schemes = [normalization_scheme(n) for n in names]
    # nnU-Net: mask-for-norm when cropping removed a lot (median relative size < 3/4); never for CT
    use_mask = bool(np.median(fingerprint["relative_sizes_after_crop"]) < 0.75)
    patch = [int(p) for p in patch_size]
    return dict(
        # version: part of the plans hash, so a new PLANS_VERSION invalidates every cached case
        version=PLANS_VERSION,
        # dataset_name, channel_names, labels (name -> output value) and median_spacing (what
        # target_spacing='median' gives) are there for the reader of plans.json; the pipeline does not use them
        dataset_name=meta.get("name", ""), channel_names=meta["channel_names"], labels=meta["labels"],
        n_classes=len(meta["labels"]), orientation=CANONICAL, target_spacing=target, patch_size=patch,
        initial_patch_size=initial_patch_size(patch), batch_size=int(batch_size),
        normalization=schemes, use_mask_for_norm=[use_mask and s == "ZScore" for s in schemes],
        foreground_intensity_properties=fingerprint["foreground_intensity_properties"],
        cases=list(fingerprint["cases"]),
        median_spacing=median_target_spacing(fingerprint["spacings"], fingerprint["shapes"]),
    )


# ---------------------------------------------------------------------------------------------------
# Whole dataset, cached
# ---------------------------------------------------------------------------------------------------
def _file_stats(root: str, meta: dict, case: str) -> list:
    out = []
    for p in dio.image_paths(root, meta, case) + [dio.label_path(root, meta, case)]:
        st = os.stat(p)
        out.append([os.path.basename(p), st.st_size, st.st_mtime_ns])
    return out


def _hash(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _save_npy(array: np.ndarray, path: str) -> None:
    def w(tmp):
        with open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(array))
    write_via(path, w)


def _save_npz(arrays: dict, path: str) -> None:
    def w(tmp):
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    write_via(path, w)


def _case_files(out_dir: str, case: str) -> dict:
    d = os.path.join(out_dir, "data")
    return dict(image=os.path.join(d, f"{case}.npy"), seg=os.path.join(d, f"{case}_seg.npy"),
                locs=os.path.join(d, f"{case}_locs.npz"), props=os.path.join(d, f"{case}.json"))


def _preprocess_case(root: str, meta: dict, case: str, plans: dict, out_dir: str, case_hash: str):
    image, label, geom = dio.read_case(root, meta, case)
    data, seg, props = preprocess_arrays(image, label, geom["spacing"], plans, geom["affine"])
    locs = class_locations(seg, range(1, plans["n_classes"]))
    files = _case_files(out_dir, case)
    _save_npy(data.astype(np.float32), files["image"])
    _save_npy(seg.astype(np.int8 if plans["n_classes"] < 127 else np.int16), files["seg"])
    _save_npz({f"class_{k}": v for k, v in locs.items()}, files["locs"])
    props.update(case=case, affine=geom["affine"], cache_hash=case_hash)
    write_json(files["props"], props)  # written last: its presence marks a complete case
    return case


def _map(fn, arg_list, workers: int, progress: bool, desc: str) -> list:
    """fn(*args) for each args, in worker processes, results in order.

    'fork' where available: workers only run numpy/scipy/nibabel, and spawn would re-import torch in
    each worker. The pool is created before tqdm starts its monitor thread.
    """
    from tqdm import tqdm
    results = [None] * len(arg_list)
    if workers <= 0 or len(arg_list) <= 1:
        bar = tqdm(total=len(arg_list), desc=desc, disable=not progress, unit="case")
        for i, args in enumerate(arg_list):
            results[i] = fn(*args)
            bar.update()
    else:
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(arg_list)), mp_context=ctx) as pool:
            futures = {pool.submit(fn, *args): i for i, args in enumerate(arg_list)}
            bar = tqdm(total=len(arg_list), desc=desc, disable=not progress, unit="case")
            for fut in as_completed(futures):
                results[futures[fut]] = fut.result()  # re-raises a worker's DatasetError here
                bar.update()
    bar.close()
    return results


def fingerprint_dataset(raw_dir: str, out_dir: str, workers: int = 2, force: bool = False,
                        progress: bool = True) -> dict:
    """The dataset fingerprint (spacings, shapes, intensities), cached in ``out_dir``/fingerprint.json and
    recomputed only when an input file (name, size, mtime) or dataset.json changed, or with ``force``."""
    meta = dio.load_dataset_json(raw_dir)
    cases = dio.validate_dataset(raw_dir, read_data=False, meta=meta)  # fast header checks for all cases first
    stats = {c: _file_stats(raw_dir, meta, c) for c in cases}
    fp_hash = _hash(dict(meta=meta, stats=stats, v=PLANS_VERSION, n=FINGERPRINT_SAMPLES))
    fp_path = os.path.join(out_dir, "fingerprint.json")
    if not force and os.path.isfile(fp_path):
        with open(fp_path) as fh:
            old = json.load(fh)
        if old.get("input_hash") == fp_hash:
            return old
    fingerprint = compute_fingerprint(raw_dir, meta, cases, workers, progress)  # reads + validates all data
    fingerprint["input_hash"] = fp_hash
    os.makedirs(out_dir, exist_ok=True)
    write_json(fp_path, fingerprint)
    return fingerprint


def prepare_dataset(raw_dir: str, out_dir: str, workers: int = 2, target_spacing="1mm",
                    patch_size=(128, 128, 128), batch_size: int = 2, force: bool = False,
                    progress: bool = True, fingerprint: dict | None = None) -> dict:
    """Validate, fingerprint, plan and preprocess ``raw_dir`` into ``out_dir``; returns the plans dict.

    Re-running reuses the fingerprint and every case whose input files (name, size, mtime), dataset.json
    and plans are unchanged; ``force`` recomputes everything. ``fingerprint``: the one ``fingerprint_dataset``
    just returned for this ``raw_dir`` and ``out_dir`` (not computed, checked or read again).
    """
    meta = dio.load_dataset_json(raw_dir)
    if fingerprint is None:
        fingerprint = fingerprint_dataset(raw_dir, out_dir, workers, force, progress)
    cases = list(fingerprint["cases"])
    stats = {c: _file_stats(raw_dir, meta, c) for c in cases}
    plans = make_plans(fingerprint, meta, target_spacing, patch_size, batch_size)
    plans_hash = _hash(plans)
    todo, reused = [], 0
    for c in cases:
        h = _hash([plans_hash, stats[c]])
        files = _case_files(out_dir, c)
        if not force and all(os.path.isfile(p) for p in files.values()):
            with open(files["props"]) as fh:
                if json.load(fh).get("cache_hash") == h:
                    reused += 1
                    continue
        todo.append((raw_dir, meta, c, plans, out_dir, h))
    os.makedirs(os.path.join(out_dir, "data"), exist_ok=True)
    _map(_preprocess_case, todo, workers, progress, "preprocess")
    plans["cache"] = dict(preprocessed=len(todo), reused=reused)
    write_json(os.path.join(out_dir, "plans.json"), plans)
    return plans


def load_plans(out_dir: str) -> dict:
    path = os.path.join(out_dir, "plans.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{out_dir}: no plans.json; run `python -m mednext_fast.train.prepare` first")
    with open(path) as fh:
        return json.load(fh)


def load_case(out_dir: str, case: str, mmap: bool = True):
    """(image (C, X, Y, Z) float32, seg (X, Y, Z), {class: (N, 3) locations}, props) of a preprocessed case."""
    files = _case_files(out_dir, case)
    mode = "r" if mmap else None
    image = np.load(files["image"], mmap_mode=mode)
    seg = np.load(files["seg"], mmap_mode=mode)
    with np.load(files["locs"]) as z:
        locs = {int(k.split("_")[1]): z[k] for k in z.files}
    with open(files["props"]) as fh:
        props = json.load(fh)
    return image, seg, locs, props
