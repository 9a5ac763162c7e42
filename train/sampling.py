"""Infinite patch sampling from a preprocessed dataset, with nnU-Net's foreground oversampling.

A batch holds ``batch_size`` patches of the *initial* (enlarged) patch size, so that the spatial
augmentation (rotation, scaling) can cut the final patch without empty corners; the
augmentation (``augment.augment``) crops them to the final ``patch_size``.

* Sample ``i`` of a batch is forced to contain foreground when ``i >= round(batch_size * (1 - 0.33))``
  (nnU-Net's rule: with batch 2 sample 1 is forced, with batch 3 sample 2). ``oversample_mode=
  "probabilistic"`` forces each sample with probability 0.33 instead.
* A forced sample picks a class uniformly among those present in the case, then a random stored voxel of
  that class (``data/{case}_locs.npz``), and centres the patch there, clamped to the allowed range.
* A patch may reach ``(initial - final) // 2`` voxels outside the image (more for images smaller than the
  patch); padding is 0 for the image and -1 for the label (-1 also marks 'outside the nonzero mask').
* Randomness: numpy Generator seeded with ``(seed, rank, worker_id)`` -> distinct, reproducible streams.

Public API
----------
``PatchDataset(out_dir, cases=None, batch_size=None, patch_size=None, initial_patch_size=None,
               oversample=0.33, oversample_mode="batch", seed=0, rank=0)``  torch IterableDataset,
               infinite; yields ``(image float32 (B, C, *initial), label int16 (B, 1, *initial))``
``make_loader(out_dir, cases=None, num_workers=2, pin_memory=False, **PatchDataset kwargs) -> DataLoader``
``PatchDataset(..., augment_in_worker=True | AugmentConfig)``: CPU-only training; the workers also run
``augment.augment`` and yield ``(image (B, C, *patch), [label pyramid])`` ready for the loss.
``crop_padded(array, origin, size, pad_value)``

Training-loop use (GPU: augmentation on the device)::

    plans = preprocess.prepare_dataset(raw_dir, pre_dir)          # or preprocess.load_plans(pre_dir)
    loader = sampling.make_loader(pre_dir, cases=train_cases, num_workers=2, seed=seed, rank=rank, pin_memory=True)
    gen = torch.Generator(device=device).manual_seed(seed * 1000 + rank)
    for step, (x, y) in zip(range(n_steps), loader):           # infinite: bound it yourself
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        image, targets = augment.augment(x, y, gen, patch_size=plans["patch_size"],
                                         use_mask_for_norm=plans["use_mask_for_norm"])
        # targets: [(B, 1, *patch) int64, 1/2, 1/4, 1/8, 1/16] for the deep-supervision loss

Validation patches: the same with ``config=augment.NO_AUGMENTATION`` (centre crop, -1 -> 0, pyramid).
CPU-only training: ``make_loader(..., augment_in_worker=True)`` and use the yielded (image, targets).
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mednext_fast.train import preprocess as pp


def crop_padded(array: np.ndarray, origin, size, pad_value) -> np.ndarray:
    """array[..., o:o+s] over the last len(size) axes; parts outside the array are ``pad_value``."""
    nd = len(size)
    spatial = array.shape[-nd:]
    out = np.full(array.shape[:-nd] + tuple(size), pad_value, dtype=array.dtype)
    src, dst = [], []
    for o, s, n in zip(origin, size, spatial):
        a, b = max(o, 0), min(o + s, n)
        if b <= a:  # no overlap at all on this axis
            return out
        src.append(slice(a, b))
        dst.append(slice(a - o, b - o))
    lead = (slice(None),) * (array.ndim - nd)
    out[lead + tuple(dst)] = array[lead + tuple(src)]
    return out


class PatchDataset(IterableDataset):
    def __init__(self, out_dir: str, cases=None, batch_size: int | None = None, patch_size=None,
                 initial_patch_size=None, oversample: float = 0.33, oversample_mode: str = "batch",
                 seed: int = 0, rank: int = 0, augment_in_worker=None):
        plans = pp.load_plans(out_dir)
        # CPU-only training: an AugmentConfig here (or True for the defaults) runs the augmentation in
        # the loader's workers, which then yield (image (B, C, *patch), [label pyramid])
        self.augment_cfg = augment_in_worker
        self.use_mask_for_norm = plans["use_mask_for_norm"]
        self.out_dir = out_dir
        self.cases = list(cases) if cases is not None else list(plans["cases"])
        if not self.cases:
            raise ValueError("PatchDataset needs at least one case")
        unknown = sorted(set(self.cases) - set(plans["cases"]))
        if unknown:
            raise ValueError(f"case(s) {unknown} are not in {out_dir}/plans.json")
        self.batch_size = int(batch_size or plans["batch_size"])
        self.patch_size = [int(p) for p in (patch_size or plans["patch_size"])]
        self.initial = [int(p) for p in (initial_patch_size or (pp.initial_patch_size(self.patch_size)
                                                               if patch_size else plans["initial_patch_size"]))]
        if any(i < p for i, p in zip(self.initial, self.patch_size)):
            raise ValueError(f"initial patch {self.initial} smaller than patch {self.patch_size}")
        if oversample_mode not in ("batch", "probabilistic"):
            raise ValueError(f"oversample_mode must be 'batch' or 'probabilistic', got {oversample_mode!r}")
        self.oversample, self.mode = float(oversample), oversample_mode
        self.seed, self.rank = int(seed), int(rank)
        self._cache: dict = {}

    def _case(self, name):
        if name not in self._cache:  # memory-mapped: workers share the page cache, not copies
            image, seg, locs, _ = pp.load_case(self.out_dir, name, mmap=True)
            self._cache[name] = (image, seg, locs)
        return self._cache[name]

    def _force_fg(self, i: int, rng) -> bool:
        if self.mode == "probabilistic":
            return bool(rng.random() < self.oversample)
        return i >= round(self.batch_size * (1 - self.oversample))

    def _bounds(self, shape):
        lb, ub = [], []
        for n, p, f in zip(shape, self.initial, self.patch_size):
            need = p - f
            if n + need < p:  # image smaller than the patch: allow enough padding to fit it
                need = p - n
            lb.append(-(need // 2))
            ub.append(n + need // 2 + need % 2 - p)
        return lb, ub

    def sample(self, rng: np.random.Generator, force_fg: bool):
        """One (image (C, *initial), label (1, *initial), centre) patch; centre is in case voxel coordinates."""
        name = self.cases[int(rng.integers(len(self.cases)))]
        image, seg, locs = self._case(name)
        lb, ub = self._bounds(seg.shape)
        if force_fg and locs:
            cls = sorted(locs)[int(rng.integers(len(locs)))]
            voxel = locs[cls][int(rng.integers(len(locs[cls])))]
            origin = [int(min(max(v - p // 2, lo), hi)) for v, p, lo, hi in zip(voxel, self.initial, lb, ub)]
        else:
            origin = [int(rng.integers(lo, hi + 1)) for lo, hi in zip(lb, ub)]
        x = crop_padded(image, origin, self.initial, 0.0).astype(np.float32, copy=False)
        y = crop_padded(seg, origin, self.initial, -1).astype(np.int16)[None]
        return x, y, [o + p // 2 for o, p in zip(origin, self.initial)]

    def batch(self, rng: np.random.Generator):
        xs, ys = [], []
        for i in range(self.batch_size):
            x, y, _ = self.sample(rng, self._force_fg(i, rng))
            xs.append(x)
            ys.append(y)
        return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))

    def __iter__(self):
        info = get_worker_info()
        wid = info.id if info is not None else 0
        rng = np.random.default_rng([self.seed, self.rank, wid])
        if not self.augment_cfg:
            while True:
                yield self.batch(rng)
        from mednext_fast.train import augment as aug
        cfg = None if self.augment_cfg is True else self.augment_cfg
        gen = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
        while True:
            x, y = self.batch(rng)
            yield aug.augment(x, y, gen, patch_size=self.patch_size, config=cfg,
                              use_mask_for_norm=self.use_mask_for_norm)


def make_loader(out_dir: str, cases=None, num_workers: int = 2, pin_memory: bool = False, prefetch_factor: int = 2,
                **kwargs) -> DataLoader:
    """Infinite DataLoader of (image, label) CPU batches; each worker builds whole batches."""
    ds = PatchDataset(out_dir, cases=cases, **kwargs)
    extra = dict(prefetch_factor=prefetch_factor, persistent_workers=True) if num_workers > 0 else {}
    return DataLoader(ds, batch_size=None, num_workers=num_workers, pin_memory=pin_memory, **extra)
