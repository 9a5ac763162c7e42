"""Full-volume inference: sliding window with Gaussian importance weighting and mirroring TTA.

nnU-Net conventions (shared/reference/nnunet-conventions-and-data.md 2.5): tile step 0.5 of the patch,
steps spread evenly from 0 to size - patch; volumes smaller than the patch are zero-padded (centred)
and the padding removed afterwards; tiles are summed as Gaussian-weighted logits and divided by the
summed weights; the Gaussian is a single 1 at index patch//2 blurred with sigma = patch/8, scaled to
max 10, zeros replaced by the smallest nonzero value; mirroring averages the logits of all 8 flips.
"""
from __future__ import annotations

import itertools
import math
from typing import Sequence

import numpy as np
import torch
from scipy.ndimage import gaussian_filter


def compute_steps(image_size: Sequence[int], patch_size: Sequence[int], step: float = 0.5) -> list:
    """Per axis, the tile start positions."""
    if not 0 < step <= 1:
        raise ValueError(f"tile step must be in (0, 1], got {step}")
    steps = []
    for size, patch in zip(image_size, patch_size):
        if size < patch:
            raise ValueError(f"image size {size} is smaller than the patch {patch}; pad first")
        n = math.ceil((size - patch) / (patch * step)) + 1
        stride = (size - patch) / (n - 1) if n > 1 else 0
        steps.append([int(round(stride * i)) for i in range(n)])
    return steps


def gaussian_importance(patch_size: Sequence[int], sigma_scale: float = 1 / 8, value_scale: float = 10.0) -> np.ndarray:
    impulse = np.zeros(patch_size, dtype=np.float64)
    impulse[tuple(p // 2 for p in patch_size)] = 1
    g = gaussian_filter(impulse, [p * sigma_scale for p in patch_size], order=0, mode="constant", cval=0)
    g = g / g.max() * value_scale
    # Zero weights (far corners, underflow) would make divisions undefined where only they cover a voxel.
    g[g == 0] = g[g > 0].min()
    return g.astype(np.float32)


WINDOW_BATCH_VOXELS = 4 * 64 ** 3  # voxels per forward when batching windows


def window_batch(patch_size: Sequence[int]) -> int:
    """Windows per forward: every call of the fused backends has a fixed cost (launches, small deep levels)
    that a batch shares; ``WINDOW_BATCH_VOXELS`` bounds the memory of one forward."""
    return max(1, WINDOW_BATCH_VOXELS // math.prod(int(p) for p in patch_size))


def _forward(model, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return out[0] if isinstance(out, (list, tuple)) else out  # deep supervision: keep full resolution


def _mirrored_logits(model, x: torch.Tensor, mirror_axes: Sequence[int]) -> torch.Tensor:
    """Average of the logits over every subset of ``mirror_axes`` (spatial axes 0..2), flips undone."""
    logits = _forward(model, x).float()
    n = 1
    for k in range(1, len(mirror_axes) + 1):
        for axes in itertools.combinations(mirror_axes, k):
            dims = [a + 2 for a in axes]
            logits += torch.flip(_forward(model, torch.flip(x, dims)).float(), dims)
            n += 1
    return logits / n


@torch.no_grad()
def sliding_window(model, image: torch.Tensor | np.ndarray, patch_size: Sequence[int], n_classes: int,
                   step: float = 0.5, mirror_axes: Sequence[int] = (), batch_size: int = 1,
                   device=None, amp_dtype=None, progress=None) -> torch.Tensor:
    """Logits (n_classes, *spatial) on the CPU for ``image`` (C, *spatial); any spatial size works.

    ``batch_size`` windows go through the model together (``window_batch`` gives a good number); the result
    is the same as one window at a time."""
    image = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image).float()
    if image.dim() != len(patch_size) + 1:
        raise ValueError(f"image must be (C, *spatial) with {len(patch_size)} spatial axes, got {tuple(image.shape)}")
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    spatial = list(image.shape[1:])
    # Zero-pad (centred) up to the patch where the volume is smaller.
    pads = [max(p - s, 0) for s, p in zip(spatial, patch_size)]
    before = [p // 2 for p in pads]
    pad_arg = []
    for b, p in zip(reversed(before), reversed(pads)):
        pad_arg += [b, p - b]
    padded = torch.nn.functional.pad(image, pad_arg) if any(pads) else image
    shape = list(padded.shape[1:])
    steps = compute_steps(shape, patch_size, step)
    weight = torch.from_numpy(gaussian_importance(patch_size)).to(device)
    acc = torch.zeros([n_classes] + shape, dtype=torch.float32, device=device)
    norm = torch.zeros(shape, dtype=torch.float32, device=device)
    tiles = list(itertools.product(*steps))
    if progress is not None:
        progress.reset(total=len(tiles))
    was_training, had_ds = model.training, getattr(model, "do_ds", False)
    model.eval()
    if had_ds:
        model.do_ds = False  # only full resolution is kept: skip the deep-supervision heads, as nnU-Net does
    try:
        for i in range(0, len(tiles), batch_size):
            chunk = tiles[i:i + batch_size]
            slices = [tuple(slice(s, s + p) for s, p in zip(t, patch_size)) for t in chunk]
            x = torch.stack([padded[(slice(None),) + sl] for sl in slices]).to(device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = _mirrored_logits(model, x, mirror_axes)
            for sl, lg in zip(slices, logits.float()):
                acc[(slice(None),) + sl] += lg * weight
                norm[sl] += weight
            if progress is not None:
                progress.update(len(chunk))
    finally:
        model.train(was_training)
        if had_ds:
            model.do_ds = True
    out = acc / norm
    crop = tuple(slice(b, b + s) for b, s in zip(before, spatial))
    return out[(slice(None),) + crop].cpu()


def predict_probabilities(models: Sequence, image, patch_size, n_classes: int, **kwargs) -> torch.Tensor:
    """Softmax probabilities averaged over ``models`` (fold ensembling), (n_classes, *spatial)."""
    if not models:
        raise ValueError("predict_probabilities needs at least one model")
    probs = None
    for model in models:
        p = torch.softmax(sliding_window(model, image, patch_size, n_classes, **kwargs), 0)
        probs = p if probs is None else probs + p
    return probs / len(models)
