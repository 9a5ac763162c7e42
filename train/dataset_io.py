"""Reading and validating nnU-Net v2 raw datasets (NIfTI through nibabel), and the MSD importer.

Layout (nnU-Net v2 raw)::

    DatasetXXX_Name/dataset.json          channel_names, labels (name -> int), numTraining, file_ending
    DatasetXXX_Name/imagesTr/{CASE}_{CCCC}{file_ending}
    DatasetXXX_Name/labelsTr/{CASE}{file_ending}
    DatasetXXX_Name/imagesTs/             optional, never read here

Public API
----------
``DatasetError``                                   every problem with the input data (the message names case and file)
``load_dataset_json(root) -> dict``                 dataset.json, checked for the required keys
``validate_dataset(root, read_data=True) -> list``  checks everything, returns the sorted case names
``read_case(root, meta, case) -> (image (C,X,Y,Z) float32, label (X,Y,Z) int16 | None, geometry dict)``
``read_volume(path) -> (array, affine, spacing)``
``write_volume(array, affine, path)``              atomic NIfTI write
``import_msd(msd_dir, out_dir) -> out_dir``         MSD/v1 ``TaskXX`` folder -> v2 raw folder

Only NIfTI (``.nii.gz`` / ``.nii``) is supported. Arrays stay in the file's voxel order (no reorientation);
spacing is the header's zooms, so all channels and the label of a case must share the same affine.
"""
from __future__ import annotations

import json
import os
import re

import numpy as np

from mednext_fast.atomic import write_json, write_via

REQUIRED_KEYS = ("channel_names", "labels", "numTraining", "file_ending")
SUPPORTED_ENDINGS = (".nii.gz", ".nii")
# Affines of one case may differ by float noise from different writers; geometry mismatches are >> this.
AFFINE_TOL = 1e-4


class DatasetError(ValueError):
    """An input dataset problem; the message says which case/file and what is wrong."""


def _nib():
    try:
        import nibabel
    except ImportError as err:  # pragma: no cover - nibabel is a dependency of train/
        raise ImportError("reading NIfTI needs nibabel: pip install nibabel") from err
    return nibabel


def write_volume(array: np.ndarray, affine: np.ndarray, path: str) -> None:
    """Atomic NIfTI write with the given affine (sets qform and sform)."""
    nib = _nib()
    img = nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=np.float64))
    write_via(path, lambda tmp: nib.save(img, tmp))


# ---------------------------------------------------------------------------------------------------
# dataset.json
# ---------------------------------------------------------------------------------------------------
def load_dataset_json(root: str) -> dict:
    path = os.path.join(root, "dataset.json")
    if not os.path.isfile(path):
        raise DatasetError(f"{root}: no dataset.json (expected an nnU-Net v2 raw folder with dataset.json, "
                           "imagesTr/, labelsTr/)")
    try:
        with open(path) as fh:
            meta = json.load(fh)
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path}: not valid JSON ({err})") from err
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        hint = " (this looks like an MSD/v1 dataset.json: import it with import_msd / prepare --msd)" \
            if "modality" in meta else ""
        raise DatasetError(f"{path}: missing required key(s) {missing}{hint}")
    if meta["file_ending"] not in SUPPORTED_ENDINGS:
        raise DatasetError(f"{path}: file_ending {meta['file_ending']!r} not supported; use one of {SUPPORTED_ENDINGS}")
    chans = meta["channel_names"]
    if not isinstance(chans, dict) or sorted(chans, key=int) != [str(i) for i in range(len(chans))] or not chans:
        raise DatasetError(f"{path}: channel_names must map '0', '1', ... to names, got {chans!r}")
    labels = meta["labels"]
    values = []
    for name, v in labels.items():
        if isinstance(v, (list, tuple)):
            raise DatasetError(f"{path}: label {name!r} is a region {v}; region-based training is not supported")
        if not isinstance(v, int) or isinstance(v, bool):
            raise DatasetError(f"{path}: label {name!r} has non-integer value {v!r} (v2 maps name -> int)")
        values.append(v)
    if sorted(values) != list(range(len(values))):
        raise DatasetError(f"{path}: label values must be consecutive 0..N-1 with 0 = background, got {sorted(values)}")
    if "ignore" in labels:
        raise DatasetError(f"{path}: an 'ignore' label is not supported by this pipeline")
    return meta


def _case_names(root: str, meta: dict) -> tuple:
    """(cases from labelsTr, {case: set(channel indices)} from imagesTr); raises on unexpected names."""
    ending = meta["file_ending"]
    img_dir, lab_dir = os.path.join(root, "imagesTr"), os.path.join(root, "labelsTr")
    for d in (img_dir, lab_dir):
        if not os.path.isdir(d):
            raise DatasetError(f"{root}: missing folder {os.path.basename(d)}/")
    pattern = re.compile(r"^(.+)_(\d{4})" + re.escape(ending) + "$")
    channels: dict = {}
    for f in sorted(os.listdir(img_dir)):
        if f.startswith("."):
            continue
        m = pattern.match(f)
        if not m:
            raise DatasetError(f"imagesTr/{f}: unexpected file; images must be named CASE_XXXX{ending} "
                               "(4-digit channel index)")
        channels.setdefault(m.group(1), set()).add(int(m.group(2)))
    cases = []
    for f in sorted(os.listdir(lab_dir)):
        if f.startswith("."):
            continue
        if not f.endswith(ending) or re.search(r"_\d{4}" + re.escape(ending) + "$", f):
            raise DatasetError(f"labelsTr/{f}: unexpected file; labels must be named CASE{ending} (no channel suffix)")
        cases.append(f[:-len(ending)])
    return cases, channels


def image_paths(root: str, meta: dict, case: str, folder: str = "imagesTr") -> list:
    return [os.path.join(root, folder, f"{case}_{c:04d}{meta['file_ending']}")
            for c in range(len(meta["channel_names"]))]


def label_path(root: str, meta: dict, case: str) -> str:
    return os.path.join(root, "labelsTr", f"{case}{meta['file_ending']}")


# ---------------------------------------------------------------------------------------------------
# Volumes
# ---------------------------------------------------------------------------------------------------
def _load_header(path: str):
    nib = _nib()
    try:
        return nib.load(path)
    except Exception as err:  # nibabel raises several types for bad headers/gzip
        raise DatasetError(f"{path}: cannot read NIfTI header ({type(err).__name__}: {err}); corrupt file?") from err


def read_volume(path: str, dtype=np.float32):
    """(array, affine, spacing) of a 3-D NIfTI; corrupt/truncated files raise DatasetError naming the file."""
    img = _load_header(path)
    try:
        data = np.asarray(img.dataobj)
    except Exception as err:  # truncated gzip -> EOFError/zlib.error/OSError, short .nii -> ValueError
        raise DatasetError(f"{path}: cannot read voxel data ({type(err).__name__}: {err}); "
                           "truncated or corrupt file?") from err
    if data.ndim != 3:
        raise DatasetError(f"{path}: expected a 3-D volume, got shape {data.shape} (one file per channel; "
                           "4-D files belong to the MSD format, see import_msd)")
    # headers store float32: round so 0.8 stays 0.8 (sub-nanometre digits are noise)
    spacing = tuple(round(float(z), 6) for z in img.header.get_zooms()[:3])
    if min(spacing) <= 0:
        raise DatasetError(f"{path}: non-positive voxel spacing {spacing}")
    return data.astype(dtype, copy=False), np.asarray(img.affine, dtype=np.float64), spacing


def _check_header(path: str, ref_shape, ref_affine, case: str, what: str):
    img = _load_header(path)
    shape = tuple(img.shape)
    if len(shape) != 3:
        raise DatasetError(f"case {case}: {path}: expected a 3-D volume, got shape {shape}"
                           + (" (wrong channel count: a multi-channel file; store one channel per file)"
                              if len(shape) == 4 else ""))
    if ref_shape is not None and shape != tuple(ref_shape):
        raise DatasetError(f"case {case}: {what} {path} has shape {shape}, but the first image channel has "
                           f"{tuple(ref_shape)}")
    if ref_affine is not None and not np.allclose(img.affine, ref_affine, atol=AFFINE_TOL):
        raise DatasetError(f"case {case}: {what} {path} has a different affine (geometry) than the first image "
                           f"channel:\n{np.round(img.affine, 4)}\nvs\n{np.round(ref_affine, 4)}")
    return shape, img.affine


def validate_dataset(root: str, read_data: bool = True, meta: dict | None = None) -> list:
    """Check a v2 raw dataset before any work starts; returns the sorted case names.

    Always checked (headers only, fast): dataset.json keys/values, file naming, missing or extra files,
    channel count per case, numTraining, 3-D shape and geometry agreement of channels and label.
    With ``read_data``: readable voxel data (truncated/corrupt .nii.gz), NaN/inf in images, label
    values integer and declared in dataset.json.
    """
    meta = meta or load_dataset_json(root)
    cases, channels = _case_names(root, meta)
    n_ch = len(meta["channel_names"])
    if not cases:
        raise DatasetError(f"{root}/labelsTr: no label files ending in {meta['file_ending']}")
    for case in cases:
        have = channels.get(case, set())
        want = set(range(n_ch))
        if have - want:
            raise DatasetError(f"case {case}: wrong channel count: imagesTr has channel(s) "
                               f"{sorted('_%04d' % c for c in have - want)} but dataset.json channel_names declares "
                               f"{n_ch} channel(s)")
        if want - have:
            missing = [os.path.basename(p) for c, p in enumerate(image_paths(root, meta, case)) if c not in have]
            raise DatasetError(f"case {case}: missing image file(s) {missing} in imagesTr "
                               f"(dataset.json declares {n_ch} channel(s))")
    extra = sorted(set(channels) - set(cases))
    if extra:
        raise DatasetError(f"imagesTr: image(s) of case(s) {extra} have no label in labelsTr "
                           f"(e.g. missing {label_path(root, meta, extra[0])})")
    if int(meta["numTraining"]) != len(cases):
        raise DatasetError(f"{root}/dataset.json: numTraining is {meta['numTraining']} but labelsTr holds "
                           f"{len(cases)} case(s)")

    allowed = np.array(sorted(meta["labels"].values()))
    for case in cases:
        with _naming(case):
            imgs = image_paths(root, meta, case)
            shape, affine = _check_header(imgs[0], None, None, case, "image")
            for p in imgs[1:]:
                _check_header(p, shape, affine, case, "image")
            _check_header(label_path(root, meta, case), shape, affine, case, "label")
            if read_data:
                check_case_data(root, meta, case, allowed)
    return cases


class _naming:
    """Context manager: prefix a DatasetError raised inside with 'case NAME: ' if it lacks it."""

    def __init__(self, case: str):
        self.prefix = f"case {case}: "

    def __enter__(self):
        return self

    def __exit__(self, typ, err, tb):
        if isinstance(err, DatasetError) and not str(err).startswith(self.prefix):
            raise DatasetError(self.prefix + str(err)) from err
        return False


def check_case_data(root: str, meta: dict, case: str, allowed=None) -> None:
    """Read a case's voxels and check values (NaN/inf, label values); raises DatasetError."""
    if allowed is None:
        allowed = np.array(sorted(meta["labels"].values()))
    for p in image_paths(root, meta, case):
        data, _, _ = read_volume(p)
        if not np.isfinite(data).all():
            n_nan, n_inf = int(np.isnan(data).sum()), int(np.isinf(data).sum())
            raise DatasetError(f"case {case}: image {p} contains {n_nan} NaN and {n_inf} inf voxel(s)")
    lp = label_path(root, meta, case)
    lab, _, _ = read_volume(lp, dtype=np.float64)
    _check_label_values(lab, allowed, case, lp)


def _check_label_values(lab: np.ndarray, allowed, case: str, path: str) -> None:
    if not np.isfinite(lab).all() or (np.round(lab) != lab).any():
        raise DatasetError(f"case {case}: label {path} has non-integer (or NaN/inf) values; labels must be "
                           "integer maps")
    values = np.unique(lab).astype(np.int64)
    bad = np.setdiff1d(values, allowed)
    if bad.size:
        raise DatasetError(f"case {case}: label {path} has value(s) {bad.tolist()} not declared in dataset.json "
                           f"labels (declared: {np.asarray(allowed).tolist()})")


def read_case(root: str, meta: dict, case: str, with_label: bool = True, folder: str = "imagesTr"):
    """(image (C, X, Y, Z) float32, label (X, Y, Z) int16 or None, geometry dict with spacing/affine/shape)."""
    with _naming(case):
        return _read_case(root, meta, case, with_label, folder)


def _read_case(root, meta, case, with_label, folder):
    chans, affine, spacing = [], None, None
    for p in image_paths(root, meta, case, folder):
        data, aff, sp = read_volume(p)
        if affine is None:
            affine, spacing = aff, sp
        elif data.shape != chans[0].shape or not np.allclose(aff, affine, atol=AFFINE_TOL):
            raise DatasetError(f"case {case}: {p} shape/affine differs from the first channel")
        if not np.isfinite(data).all():
            raise DatasetError(f"case {case}: image {p} contains {int(np.isnan(data).sum())} NaN and "
                               f"{int(np.isinf(data).sum())} inf voxel(s)")
        chans.append(data)
    image = np.stack(chans)
    label = None
    if with_label:
        lp = label_path(root, meta, case)
        lab, laff, _ = read_volume(lp, dtype=np.float64)
        if lab.shape != image.shape[1:] or not np.allclose(laff, affine, atol=AFFINE_TOL):
            raise DatasetError(f"case {case}: label {lp} shape/affine differs from the image")
        _check_label_values(lab, np.array(sorted(meta["labels"].values())), case, lp)
        label = lab.astype(np.int16)
    geometry = dict(spacing=list(spacing), affine=affine.tolist(), shape=list(image.shape[1:]))
    return image, label, geometry


# ---------------------------------------------------------------------------------------------------
# MSD (Medical Segmentation Decathlon / nnU-Net v1 'Task') importer
# ---------------------------------------------------------------------------------------------------
def import_msd(msd_dir: str, out_dir: str) -> str:
    """Convert an MSD folder (4-D NIfTI images, v1 dataset.json) into a v2 raw folder at ``out_dir``.

    Each 4-D image is split into ``_0000``, ``_0001``, ... files, labels are copied (re-written with the
    image affine checked), ``labels`` is flipped to name -> int, ``modality`` becomes ``channel_names``.
    """
    path = os.path.join(msd_dir, "dataset.json")
    if not os.path.isfile(path):
        raise DatasetError(f"{msd_dir}: no dataset.json; not an MSD folder")
    with open(path) as fh:
        old = json.load(fh)
    for key in ("modality", "labels", "training"):
        if key not in old:
            raise DatasetError(f"{path}: MSD dataset.json lacks {key!r}")
    n_ch = len(old["modality"])
    _nib()  # without nibabel, fail before creating any folder
    os.makedirs(os.path.join(out_dir, "imagesTr"), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "labelsTr"), exist_ok=True)
    for entry in old["training"]:
        img_p = os.path.join(msd_dir, entry["image"])
        lab_p = os.path.join(msd_dir, entry["label"])
        case = os.path.basename(entry["image"])
        case = case[:-len(".nii.gz")] if case.endswith(".nii.gz") else os.path.splitext(case)[0]
        img = _load_header(img_p)
        try:
            data = np.asarray(img.dataobj)
        except Exception as err:
            raise DatasetError(f"case {case}: {img_p}: cannot read voxel data ({err}); corrupt file?") from err
        if data.ndim == 3:
            data = data[..., None]
        if data.ndim != 4 or data.shape[3] != n_ch:
            raise DatasetError(f"case {case}: {img_p} has shape {data.shape}; expected 3-D+{n_ch} channel(s) "
                               f"(dataset.json modality lists {n_ch}) — wrong channel count")
        for c in range(n_ch):
            write_volume(data[..., c], img.affine, os.path.join(out_dir, "imagesTr", f"{case}_{c:04d}.nii.gz"))
        lab_img = _load_header(lab_p)
        try:
            lab = np.asarray(lab_img.dataobj)
        except Exception as err:
            raise DatasetError(f"case {case}: {lab_p}: cannot read voxel data ({err}); corrupt file?") from err
        write_volume(lab, lab_img.affine, os.path.join(out_dir, "labelsTr", f"{case}.nii.gz"))
    meta = dict(
        name=old.get("name", os.path.basename(os.path.normpath(msd_dir))),
        description=old.get("description", ""),
        channel_names={str(k): v for k, v in old["modality"].items()},
        labels={name: int(k) for k, name in old["labels"].items()},
        numTraining=len(old["training"]),
        file_ending=".nii.gz",
        converted_by="mednext_fast.train.dataset_io.import_msd",
    )
    for key in ("reference", "licence", "release"):
        if key in old:
            meta[key] = old[key]
    write_json(os.path.join(out_dir, "dataset.json"), meta)
    return out_dir
