"""Plans from the dataset fingerprint: target spacing, patch size, batch size and (on CPU) the run length.

nnU-Net's rules (shared/reference/nnunet-conventions-and-data.md 2.2), with a budget per device instead of its
VRAM estimate:

* **Target spacing**: the per-axis median of the training spacings with nnU-Net's anisotropy rule
  (``preprocess.median_target_spacing``); the paper preset keeps the paper's 1 mm. On a CPU budget the
  spacing is then coarsened, finest axes first, until the median case fits ``case_voxels``: a run of minutes
  sees a few hundred patches, and a coarser grid lets each of them cover more of the anatomy (and makes
  whole-volume prediction fast).
* **Patch size**: the median shape at the target spacing rounded to multiples of 16, then shrunk 16 voxels
  at a time along the axis that is largest relative to the median shape, until it fits ``patch_voxels``.
* **Batch size**: 2 (nnU-Net's minimum and the paper's), more while the patch is much smaller than the budget,
  but never more than 5 % of the dataset's voxels per batch (nnU-Net's cap).
* **Run length** on CPU: the epochs that fit ``minutes`` at a measured training-step time (``fit_epochs``).

Every option the user gave explicitly wins; every decision comes with a sentence saying why, which the run
writes to its log and to plans.json.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mednext_fast.checks import DIVISOR, trainable_size
from mednext_fast.train.preprocess import median_target_spacing, new_shape

MIN_BATCH = 2             # nnU-Net's and the paper's batch size
MAX_BATCH_FRACTION = 0.05  # nnU-Net: one batch covers at most 5 % of the dataset's voxels
COARSEN_STEP = 0.05       # spacing growth per step (of the finest spacing) while fitting the case budget


@dataclass(frozen=True)
class Budget:
    """What one run can afford: voxels per patch (the memory and per-step compute), voxels per median case at
    the target spacing (None: keep the spacing) and minutes of training (None: the preset's epochs)."""
    name: str
    patch_voxels: int
    max_side: int | None = None
    case_voxels: int | None = None
    minutes: float | None = None


# The paper: 128^3 patches at batch 2 on a GPU. The CPU budget is sized for the CPU-sized model to train in
# minutes on 2 cores and to still see an adult brain's shape (measurements: docs/training.md).
PAPER_BUDGET = Budget("paper", patch_voxels=128 ** 3, max_side=128)
CPU_BUDGET = Budget("cpu", patch_voxels=64 ** 3, case_voxels=96 ** 3, minutes=8.0)


def round_to(n: float, divisor: int = DIVISOR) -> int:
    """The nearest multiple of ``divisor`` (at least ``divisor``)."""
    return max(divisor, int(round(n / divisor)) * divisor)


def coarsen_spacing(spacing, median_mm, case_voxels: int) -> list:
    """``spacing`` with its finest axes grown, in steps of 5 % of the finest spacing and never beyond the
    coarsest axis, until the median extent ``median_mm`` (mm per axis) holds at most ``case_voxels`` voxels;
    an anisotropic spacing becomes isotropic last."""
    base = [float(s) for s in spacing]
    step = COARSEN_STEP * min(base)

    def voxels(sp):
        return math.prod(max(e / s, 1.0) for e, s in zip(median_mm, sp))

    level = min(base)
    target = list(base)
    while voxels(target) > case_voxels:
        level += step
        target = [max(s, level) for s in base]
    return [round(s, 4) for s in target]


def fit_patch(median_shape, patch_voxels: int, max_side: int | None = None) -> list:
    """nnU-Net's patch rule with a voxel budget: the median shape rounded to multiples of 16 (at most
    ``max_side``), shrunk by 16 along the axis largest relative to the median shape until it fits, never below
    a trainable size."""
    median = [max(float(m), 1.0) for m in median_shape]
    patch = [min(round_to(m), max_side or math.inf) for m in median]
    while math.prod(patch) > patch_voxels:
        order = sorted(range(len(patch)), key=lambda a: (patch[a] / median[a], patch[a]), reverse=True)
        for axis in order:
            smaller = patch[:axis] + [patch[axis] - DIVISOR] + patch[axis + 1:]
            if smaller[axis] >= DIVISOR and trainable_size(smaller):
                patch = smaller
                break
        else:
            break  # nothing smaller trains: keep the smallest trainable patch
    if not trainable_size(patch):  # a tiny dataset: grow the largest axis to the minimum that trains
        patch[int(np.argmax(median))] = 2 * DIVISOR
    return patch


def fit_batch(patch, patch_voxels: int, dataset_voxels: float) -> int:
    """2, or more while a larger batch stays within the patch budget (x2) and 5 % of the dataset's voxels."""
    per_patch = math.prod(patch)
    by_budget = (MIN_BATCH * patch_voxels) // per_patch
    by_dataset = int(MAX_BATCH_FRACTION * dataset_voxels // per_patch)
    return int(max(MIN_BATCH, min(by_budget, by_dataset)))


def fit_epochs(step_seconds: float, iters_per_epoch: int, val_iters: int, minutes: float,
               val_cost: float = 1 / 3) -> int:
    """Epochs of ``iters_per_epoch`` training steps (plus ``val_iters`` validation batches at ``val_cost`` of
    a step) that fit in ``minutes``; at least 1."""
    per_epoch = step_seconds * (iters_per_epoch + val_cost * val_iters)
    return max(1, int(minutes * 60 / per_epoch))


def plan(fingerprint: dict, budget: Budget, spacing_rule: str = "median", target_spacing=None, patch_size=None,
         batch_size: int | None = None) -> tuple[dict, list]:
    """(dict(target_spacing, patch_size, batch_size), reasons) for a dataset ``fingerprint``.

    ``spacing_rule`` is 'median' (nnU-Net) or '1mm' (the paper); ``target_spacing`` / ``patch_size`` /
    ``batch_size`` given explicitly are kept as they are.
    """
    spacings = np.asarray(fingerprint["spacings"], float)
    shapes = np.asarray(fingerprint.get("shapes_after_crop", fingerprint["shapes"]), float)
    median_mm = np.median(shapes * spacings, 0)  # the median case's extent after cropping
    reasons = []
    if target_spacing is not None:
        target = [float(t) for t in target_spacing]
        reasons.append(f"target spacing {target} mm: given")
    elif spacing_rule == "1mm":
        target = [1.0, 1.0, 1.0]
        reasons.append("target spacing [1.0, 1.0, 1.0] mm: the paper's isotropic 1 mm")
    else:
        median = median_target_spacing(spacings, shapes)
        target = median
        why = f"the median spacing {_mm(median)} mm (nnU-Net's rule)"
        if budget.case_voxels is not None:
            target = coarsen_spacing(median, median_mm, budget.case_voxels)
            if target != [round(m, 4) for m in median]:
                why += (f", coarsened so the median case ({_mm(median_mm, 0)} mm after cropping) fits "
                        f"{_cube(budget.case_voxels)} voxels on the {budget.name} budget")
        reasons.append(f"target spacing {_mm(target)} mm: {why}")
    median_shape = [e / t for e, t in zip(median_mm, target)]
    if patch_size is not None:
        patch = [int(p) for p in patch_size]
        reasons.append(f"patch {patch}: given")
    else:
        patch = fit_patch(median_shape, budget.patch_voxels, budget.max_side)
        cap = f" (at most {budget.max_side} per axis)" if budget.max_side else ""
        unconstrained = fit_patch(median_shape, math.inf, budget.max_side)
        fitted = "shrunk to" if math.prod(patch) < math.prod(unconstrained) else "within"
        reasons.append(f"patch {patch}: the median shape {[int(round(m)) for m in median_shape]} at that spacing, "
                       f"rounded to multiples of 16{cap}, {fitted} the {budget.name} budget of "
                       f"{_cube(budget.patch_voxels)} voxels")
    if batch_size is not None:
        batch = int(batch_size)
        reasons.append(f"batch size {batch}: given")
    else:
        dataset_voxels = sum(math.prod(new_shape(s, sp, target)) for s, sp in zip(shapes, spacings))
        batch = fit_batch(patch, budget.patch_voxels, dataset_voxels)
        reasons.append(f"batch size {batch}: nnU-Net's minimum of {MIN_BATCH}" if batch == MIN_BATCH else
                       f"batch size {batch}: the patch is small for the budget (at most 5 % of the dataset's "
                       "voxels per batch)")
    return dict(target_spacing=target, patch_size=patch, batch_size=batch), reasons


def _mm(values, digits: int = 2) -> list:
    return [round(float(v), digits) if digits else int(round(float(v))) for v in values]


def _cube(voxels: int) -> str:
    side = round(voxels ** (1 / 3))
    return f"{side}^3" if side ** 3 == voxels else f"{voxels}"
