"""The trainer's and predictor's door to the data pipeline (``dataset_io``, ``preprocess``, ``sampling``,
``augment``, ``synthetic``, ``colin27``): they call the functions here, plus the inverse of the
preprocessing (``preprocess.revert_to_original``), so the pipeline can change without touching the loop.

What is ours (the pipeline has no counterpart): the seeded k-fold split and the run's split file,
per-epoch random streams for an exact resume, and background prefetching.
"""
from __future__ import annotations

import json
import os
import queue
import threading
from dataclasses import dataclass

import numpy as np
import torch

from mednext_fast.train import augment as aug
from mednext_fast.train import dataset_io as dio
from mednext_fast.train import preprocess as pp
from mednext_fast.train import sampling

DatasetError = dio.DatasetError
N_FOLDS = 5  # nnU-Net's cross-validation
FOLD_ALL = "all"  # nnU-Net's fold that trains one model on every case, nothing held out


# ---------------------------------------------------------------------------------------------------
# Raw dataset (nnU-Net v2 layout) and preprocessing
# ---------------------------------------------------------------------------------------------------
@dataclass
class RawDataset:
    root: str
    meta: dict
    cases: list

    @property
    def labels(self) -> dict:
        return {k: int(v) for k, v in self.meta["labels"].items()}

    @property
    def n_classes(self) -> int:
        return max(self.labels.values()) + 1

    @property
    def in_channels(self) -> int:
        return len(self.meta["channel_names"])


def open_dataset(root: str) -> RawDataset:
    """Check a raw dataset's layout and headers (fast; voxel values are checked during preprocessing)."""
    if not os.path.isfile(os.path.join(root, "dataset.json")):
        raise FileNotFoundError(f"{root}: no dataset.json; expected an nnU-Net v2 raw dataset folder "
                                "(dataset.json, imagesTr/, labelsTr/)")
    meta = dio.load_dataset_json(root)
    return RawDataset(root, meta, dio.validate_dataset(root, read_data=False, meta=meta))


def fingerprint(ds: RawDataset, out_dir: str, workers: int = 2, progress: bool = True) -> dict:
    """The dataset's fingerprint (spacings, shapes after cropping, intensities), cached in ``out_dir``."""
    return pp.fingerprint_dataset(ds.root, out_dir, workers=workers, progress=progress)


def prepare(ds: RawDataset, out_dir: str, patch_size, batch_size: int, target_spacing="1mm", workers: int = 2,
            progress: bool = True, fingerprint: dict | None = None) -> dict:
    """Fingerprint (unless ``fingerprint``, this run's, is given), plan and preprocess into ``out_dir`` (cached:
    unchanged cases are reused); the plans."""
    return pp.prepare_dataset(ds.root, out_dir, workers=workers, target_spacing=target_spacing,
                              patch_size=patch_size, batch_size=batch_size, progress=progress,
                              fingerprint=fingerprint)


def read_raw_case(ds: RawDataset, case: str, with_label: bool = True):
    """(image (C, X, Y, Z), label or None, spacing, affine) of a raw training case."""
    image, label, geom = dio.read_case(ds.root, ds.meta, case, with_label=with_label)
    return image, label, geom["spacing"], np.asarray(geom["affine"])


def read_image_files(paths: list):
    """(image (C, X, Y, Z), spacing, affine) from one NIfTI file per channel (all on the same grid)."""
    arrays, spacing, affine = [], None, None
    for path in paths:
        array, aff, sp = dio.read_volume(path)
        if affine is not None and (array.shape != arrays[0].shape or not np.allclose(aff, affine, atol=1e-4)):
            raise DatasetError(f"{path}: shape/affine differ from the first channel {paths[0]}")
        arrays.append(array)
        spacing, affine = (sp, aff) if affine is None else (spacing, affine)
    return np.stack(arrays).astype(np.float32), list(spacing), np.asarray(affine)


def write_label(label: np.ndarray, affine, path: str) -> None:
    dio.write_volume(label.astype(np.uint8 if label.max() < 256 else np.int16), np.asarray(affine), path)


def preprocess_image(image: np.ndarray, spacing, plans: dict, affine=None):
    """Inference preprocessing (reorient -> crop -> normalise -> resample); (image, props for
    ``preprocess.revert_to_original``)."""
    pre, _, props = pp.preprocess_arrays(image, None, spacing, plans, affine)
    return pre, props


# ---------------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------------
def make_splits(cases, n_folds: int = 5, seed: int = 12345) -> list:
    """Seeded k-fold: [{'train': [...], 'val': [...]}, ...]; fewer folds when there are fewer cases."""
    cases = sorted(cases)
    if len(cases) < 2:
        raise ValueError(f"cross-validation needs at least 2 cases, got {len(cases)}")
    n_folds = min(n_folds, len(cases))
    order = np.random.default_rng(seed).permutation(len(cases))
    chunks = np.array_split(order, n_folds)
    return [dict(train=sorted(cases[i] for j, c in enumerate(chunks) if j != k for i in c),
                 val=sorted(cases[i] for i in chunks[k])) for k in range(n_folds)]


def run_splits(ds: RawDataset, run_dir: str, seed: int) -> list:
    """The run's split: its own ``splits_final.json`` when it has one (it must list the dataset's cases), else
    the dataset's (e.g. Colin27's hemispheres), else a seeded 5-fold split."""
    path = os.path.join(run_dir, "splits_final.json")
    if os.path.isfile(path):
        with open(path) as handle:
            splits = json.load(handle)
        if sorted(splits[0]["train"] + splits[0]["val"]) != sorted(ds.cases):
            raise SystemExit(f"{path} lists other cases than {ds.root}; use another --output")
        return splits
    own = os.path.join(ds.root, "splits_final.json")
    if os.path.isfile(own):
        with open(own) as handle:
            return json.load(handle)
    return make_splits(ds.cases, N_FOLDS, seed)


# ---------------------------------------------------------------------------------------------------
# Batches: pipeline sampling (CPU thread) + pipeline augmentation (on the training device)
# ---------------------------------------------------------------------------------------------------
class Batches:
    """Augmented training (or plain validation) batches of one rank.

    Every epoch draws from its own generators, seeded by (seed, rank, epoch): the sampler state to save
    for an exact resume is (seed, rank) plus the epoch, and prefetching cannot disturb it. Patches are
    cut on a background thread (numpy releases the GIL) while the device runs the previous step.
    """

    def __init__(self, preprocessed: str, cases, plans: dict, patch_size, batch_size: int, augment: bool = True,
                 seed: int = 0, rank: int = 0):
        initial = None if augment else list(patch_size)  # no spatial augmentation: cut the final patch
        self.dataset = sampling.PatchDataset(preprocessed, cases=cases, batch_size=batch_size,
                                             patch_size=patch_size, initial_patch_size=initial, seed=seed,
                                             rank=rank)
        self.patch_size, self.augment, self.seed, self.rank = list(patch_size), augment, seed, rank
        self.use_mask_for_norm = plans.get("use_mask_for_norm", False)

    def state_dict(self) -> dict:
        return dict(seed=self.seed, rank=self.rank)

    def load_state_dict(self, state: dict) -> None:
        self.seed = state["seed"]

    def epoch(self, epoch: int, n_batches: int, device: torch.device, prefetch: int = 2):
        """Iterator of (image (B, C, *patch), [label pyramid, full resolution first]) on ``device``."""
        rng = np.random.default_rng([self.seed, self.rank, epoch])
        gen = torch.Generator(device=device)
        gen.manual_seed(int(np.random.default_rng([self.seed, self.rank, epoch, 1]).integers(2 ** 62)))
        pin = device.type == "cuda"

        def make(r):
            x, y = self.dataset.batch(r)
            return (x.pin_memory(), y.pin_memory()) if pin else (x, y)

        config = None if self.augment else aug.NO_AUGMENTATION
        for x, y in _Prefetcher(make, rng, n_batches, prefetch):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            yield aug.augment(x, y.long(), gen, self.patch_size, config=config,
                              use_mask_for_norm=self.use_mask_for_norm)


class _Prefetcher:
    """Runs ``make(rng)`` ``n`` times on a thread, ``depth`` results ahead of the consumer."""

    def __init__(self, make, rng, n: int, depth: int):
        self.q: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self.n = n

        def work():
            try:
                for _ in range(n):
                    self.q.put(make(rng))
            except BaseException as err:  # surface worker errors in the training loop
                self.q.put(err)

        self.thread = threading.Thread(target=work, daemon=True)
        self.thread.start()

    def __iter__(self):
        for _ in range(self.n):
            item = self.q.get()
            if isinstance(item, BaseException):
                raise item
            yield item
        self.thread.join()


# ---------------------------------------------------------------------------------------------------
# Datasets by name
# ---------------------------------------------------------------------------------------------------
DEFAULT_DATASET = "colin27-brain"  # the pipeline falls back to the synthetic phantoms without mricron-data


def resolve_dataset(name: str, workdir: str, log=print) -> str:
    """Raw dataset folder for a built-in name (generated under ``workdir/<name>/raw``), an MSD folder
    (converted there) or an nnU-Net v2 raw folder (used as is)."""
    from mednext_fast.train import prepare as prep
    if os.path.isdir(name):
        return prep.get_raw(name, os.path.join(workdir, os.path.basename(os.path.normpath(name))), log=log)
    return prep.get_raw(name, os.path.join(workdir, name), log=log)


def write_synthetic(root: str, n_cases: int = 8, shape=(48, 48, 48), seed: int = 0) -> str:
    """The pipeline's MR phantoms (organ, vessel, lesion) as a raw dataset (used by the tests)."""
    from mednext_fast.train import synthetic
    return synthetic.write_synthetic_dataset(root, kind="mr", n_cases=n_cases, shape=shape, seed=seed)
