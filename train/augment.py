"""nnU-Net v2's default training augmentation as batched torch ops on the training device.

Input: a batch from ``sampling`` moved to the device: image (B, C, *initial) float, label (B, 1, *initial)
int (-1 = outside the image / outside the nonzero mask). Output: image (B, C, *patch) float32 and the
deep-supervision label pyramid [(B, 1, *patch), (B, 1, *patch/2), ... (B, 1, *patch/16)] int64 with
-1 mapped to 0.

Transforms, in nnU-Net v2's order, probabilities per sample (``AugmentConfig`` holds every number;
reference: shared/reference/nnunet-conventions-and-data.md 2.3):

1. spatial: rotation (p 0.2, U(-30, 30) deg about each axis) and scaling (p 0.2, U(0.7, 1.4), same on all
   axes), drawn separately; image trilinear, outside = 0; label: one-hot of each value (including -1)
   resampled trilinearly, argmax; the weight falling outside the source goes to -1. Samples with neither
   are centre-cropped exactly (no interpolation).
2. Gaussian noise p 0.1, std U(0, 0.1), same for all channels
3. Gaussian blur p 0.2, per channel p 0.5, sigma U(0.5, 1.0) drawn per axis and channel
4. multiplicative brightness p 0.15, factor per channel (*)
5. contrast p 0.15, factor per channel (*), range of the channel kept
6. low resolution p 0.25, per channel p 0.5 with zoom U(0.5, 1) (same on all axes); nearest-exact down,
   trilinear up
7. gamma on the inverted image p 0.1, 8. gamma p 0.3: gamma (*) from (0.7, 1.5), mean and std restored
9. mirroring: each axis flipped with p 0.5 (image and label, exact)
10. image = 0 where label < 0 if use_mask_for_norm; 11. label -1 -> 0; 12. nearest-exact label pyramid

(*) nnU-Net's 'BGContrast' draw: with p 0.5 U(low, 1), else U(1, high).

Randomness: all decisions come from ``generator`` (a torch.Generator on any device); big noise tensors
use a device generator seeded from it, so a seed fixes the whole augmentation on CPU and on GPU.
Spatial and some intensity steps loop over the selected samples (B is 2 in the paper's plans).

Public API
----------
``augment(image, label, generator, patch_size=None, config=None, use_mask_for_norm=False, record=None)
  -> (image, [label pyramid])``
``center_crop(image, label, patch_size)``, ``label_pyramid(label, n_scales=5)``, ``AugmentConfig``,
``NO_AUGMENTATION`` (a config with every probability 0: validation patches)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    p_rotation: float = 0.2
    rotation_deg: float = 30.0
    p_scale: float = 0.2
    scale_range: tuple = (0.7, 1.4)
    p_noise: float = 0.1
    noise_std_range: tuple = (0.0, 0.1)
    p_blur: float = 0.2
    p_blur_channel: float = 0.5
    blur_sigma_range: tuple = (0.5, 1.0)
    p_brightness: float = 0.15
    brightness_range: tuple = (0.75, 1.25)
    p_contrast: float = 0.15
    contrast_range: tuple = (0.75, 1.25)
    p_lowres: float = 0.25
    p_lowres_channel: float = 0.5
    lowres_zoom_range: tuple = (0.5, 1.0)
    p_gamma_inverted: float = 0.1
    p_gamma: float = 0.3
    gamma_range: tuple = (0.7, 1.5)
    p_mirror: float = 0.5
    mirror_axes: tuple = (0, 1, 2)
    n_ds_scales: int = 5


NO_AUGMENTATION = AugmentConfig(p_rotation=0, p_scale=0, p_noise=0, p_blur=0, p_brightness=0, p_contrast=0,
                                p_lowres=0, p_gamma_inverted=0, p_gamma=0, p_mirror=0)


class _Draw:
    """Scalar random draws from ``generator`` (on its device), returned as Python floats."""

    def __init__(self, generator: torch.Generator):
        self.g = generator

    def u(self, lo=0.0, hi=1.0) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=self.g, device=self.g.device))

    def bernoulli(self, p: float) -> bool:
        return self.u() < p

    def bg(self, rng) -> float:
        """nnU-Net's BGContrast: half the time below 1, half the time above."""
        lo, hi = rng
        if lo < 1 and self.bernoulli(0.5):
            return self.u(lo, 1.0)
        return self.u(max(lo, 1.0), hi)

    def device_generator(self, device) -> torch.Generator:
        seed = int(torch.randint(0, 2 ** 62, (), generator=self.g, device=self.g.device))
        return torch.Generator(device=device).manual_seed(seed)


# ---------------------------------------------------------------------------------------------------
# Spatial
# ---------------------------------------------------------------------------------------------------
def _rotation(angles) -> torch.Tensor:
    """R = Rz @ Ry @ Rx for angles (radians) about axes 0, 1, 2 (in voxel-index space)."""
    mats = []
    for axis, a in enumerate(angles):
        c, s = math.cos(a), math.sin(a)
        m = torch.eye(3, dtype=torch.float64)
        i, j = [k for k in range(3) if k != axis]
        m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
        mats.append(m)
    return mats[2] @ mats[1] @ mats[0]


def center_crop(image: torch.Tensor, label: torch.Tensor, patch_size):
    """Crop (B, C, *S) and (B, 1, *S) to the central ``patch_size`` (exact; S >= patch)."""
    sl = []
    for s, p in zip(image.shape[2:], patch_size):
        if s < p:
            raise ValueError(f"input spatial shape {tuple(image.shape[2:])} is smaller than patch {tuple(patch_size)}")
        a = (s - p) // 2
        sl.append(slice(a, a + p))
    sl = (slice(None), slice(None)) + tuple(sl)
    return image[sl], label[sl]


def _warp_label(lab: torch.Tensor, vox: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Label at each output voxel = the value with the largest summed trilinear weight among its 8 source
    neighbours (-1 outside the source): the same as resampling every label's one-hot and taking the argmax
    (nnU-Net), without K full-size one-hot channels.

    One 2-channel trilinear pass gives the weighted mean and variance of the neighbour labels; where the
    variance is ~0 every weighted neighbour agrees and the mean is the answer. Only the remaining voxels
    (on label boundaries) get the explicit 8-neighbour vote.
    """
    code = (lab.float() + 1)                      # -1 -> 0, so zero padding outside means label -1
    both = torch.stack([code, code * code])[None]
    m = F.grid_sample(both, grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0]
    mean, var = m[0].reshape(-1), (m[1] - m[0] * m[0]).reshape(-1)
    out = torch.round(mean) - 1
    # var < 1e-3 forces any minority label's weight below ~1e-3, so rounding the mean is the argmax
    mixed = torch.nonzero(var > 1e-3)[:, 0]
    if mixed.numel():
        padded = F.pad(lab.float(), (1, 1, 1, 1, 1, 1), value=-1.0)  # border = -1: no bounds checks below
        size = torch.tensor(padded.shape, device=lab.device, dtype=torch.float32)
        c = (vox.reshape(-1, 3)[mixed] + 1).clamp(min=0)
        c = torch.minimum(c, size - 1 - 1e-3)
        base = torch.floor(c)
        frac = c - base
        base = base.long()
        flat = padded.reshape(-1)
        sy, sz = padded.shape[1] * padded.shape[2], padded.shape[2]
        labels, weights = [], []
        for corner in range(8):
            d = [(corner >> 2) & 1, (corner >> 1) & 1, corner & 1]
            lin = (base[:, 0] + d[0]) * sy + (base[:, 1] + d[1]) * sz + base[:, 2] + d[2]
            labels.append(flat[lin])
            w = torch.ones_like(frac[:, 0])
            for a in range(3):
                w = w * (frac[:, a] if d[a] else 1 - frac[:, a])
            weights.append(w)
        labels, weights = torch.stack(labels), torch.stack(weights)             # (8, n)
        score = ((labels[:, None] == labels[None]).float() * weights[None]).sum(1)  # weight of each corner's label
        out[mixed] = labels.gather(0, score.argmax(0, keepdim=True))[0]
    return out


def _warp(image: torch.Tensor, label: torch.Tensor, matrix: torch.Tensor, patch_size):
    """Resample one sample (C, *S), (1, *S) at src = centre + matrix @ (out - out_centre), voxel units."""
    dev = image.device
    S = torch.tensor(image.shape[1:], dtype=torch.float64)
    P = torch.tensor(list(patch_size), dtype=torch.float64)
    # source bounding box of the output patch corners: only that region is read
    corners = torch.cartesian_prod(*[torch.tensor([0.0, p - 1.0], dtype=torch.float64) for p in patch_size])
    src = (corners - (P - 1) / 2) @ matrix.T + (S - 1) / 2
    lo = torch.clamp(torch.floor(src.min(0).values) - 1, min=0).long()
    hi = torch.minimum(torch.ceil(src.max(0).values) + 2, S).long()
    hi = torch.maximum(hi, lo + 1)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    img = image[(slice(None),) + box]
    lab = label[(slice(None),) + box]
    size = (hi - lo).double()
    # output voxel (centred offset u*(P-1)/2 of affine_grid's u in [-1, 1]) -> source voxel in the box:
    # one affine, so F.affine_grid builds the coordinates in C++
    A = matrix @ torch.diag((P - 1) / 2)
    t = (S - 1) / 2 - lo.double()
    theta = torch.cat([A.flip(1), t[:, None]], 1)  # affine_grid's u comes in (x=W, y=H, z=D) order
    vox = F.affine_grid(theta[None].to(dev, torch.float32), [1, 1] + list(patch_size), align_corners=True)[0]
    scale = (2 / torch.clamp(size - 1, min=1)).to(dev, torch.float32)
    grid = (vox * scale - 1).flip(-1)[None]                                     # grid_sample wants (x, y, z)
    warped = F.grid_sample(img[None].float(), grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0]
    new_label = _warp_label(lab[0], vox, grid).view(1, *patch_size).to(label.dtype)
    return warped.to(image.dtype), new_label


# ---------------------------------------------------------------------------------------------------
# Intensity
# ---------------------------------------------------------------------------------------------------
def _gaussian_blur_1d(x: torch.Tensor, sigma: float, axis: int) -> torch.Tensor:
    """x (1, 1, D, H, W) blurred along spatial ``axis`` (0..2) with a truncated (3 sigma) Gaussian."""
    r = max(int(math.ceil(3 * sigma)), 1)
    t = torch.arange(-r, r + 1, dtype=torch.float32, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    shape = [1, 1, 1, 1, 1]
    shape[2 + axis] = 2 * r + 1
    pad = [0, 0, 0, 0, 0, 0]
    pad[2 * (2 - axis)], pad[2 * (2 - axis) + 1] = r, r  # F.pad lists the last axis first
    return F.conv3d(F.pad(x, pad, mode="replicate"), k.view(shape))


def _gamma(x: torch.Tensor, gamma: float, invert: bool) -> torch.Tensor:
    """nnU-Net gamma on one channel: rescale to [0, 1], ** gamma, back; mean and std restored."""
    if invert:
        x = -x
    mean, std = x.mean(), x.std()
    lo = x.min()
    rng = x.max() - lo
    y = ((x - lo) / (rng + 1e-7)) ** gamma * (rng + 1e-7) + lo
    y = (y - y.mean()) / (y.std() + 1e-8) * std + mean
    return -y if invert else y


def label_pyramid(label: torch.Tensor, n_scales: int = 5) -> list:
    """[label, label at 1/2, ..., 1/2**(n-1)] by nearest-exact down-sampling, int64 (B, 1, ...)."""
    out = [label.long()]
    for k in range(1, n_scales):
        size = [max(s // 2 ** k, 1) for s in label.shape[2:]]
        out.append(F.interpolate(label.float(), size=size, mode="nearest-exact").long())
    return out


def augment(image: torch.Tensor, label: torch.Tensor, generator: torch.Generator, patch_size=None,
            config: AugmentConfig | None = None, use_mask_for_norm=False, record: dict | None = None):
    """Augment a batch on its device; returns (image (B, C, *patch) float32, [label pyramid] int64).

    ``patch_size`` is the final patch (default: the input size, i.e. no enlarged initial patch).
    ``use_mask_for_norm``: bool or per-channel list from the plans. ``record``: if a dict is given, it
    receives the per-sample decisions and drawn values (for tests and debugging).
    """
    cfg = config or AugmentConfig()
    if image.dim() != 5 or label.dim() != 5 or label.shape[1] != 1:
        raise ValueError(f"expected image (B, C, X, Y, Z) and label (B, 1, X, Y, Z), got {tuple(image.shape)} "
                         f"and {tuple(label.shape)}")
    if image.shape[0] != label.shape[0] or image.shape[2:] != label.shape[2:]:
        raise ValueError(f"image {tuple(image.shape)} and label {tuple(label.shape)} disagree in batch or spatial size")
    patch = list(patch_size) if patch_size is not None else list(image.shape[2:])
    draw = _Draw(generator)
    B, C = image.shape[:2]
    rec = {k: [] for k in ("rotation", "angles", "scale", "scale_factor", "noise", "noise_std", "blur", "blur_sigma",
                           "brightness", "brightness_factor", "contrast", "contrast_factor", "lowres", "lowres_zoom",
                           "gamma_inverted", "gamma", "gamma_value", "mirror")}
    image = image.float()

    # 1 spatial
    outs_x, outs_y = [], []
    for b in range(B):
        rot, scl = draw.bernoulli(cfg.p_rotation), draw.bernoulli(cfg.p_scale)
        a = math.radians(cfg.rotation_deg)
        angles = [draw.u(-a, a) for _ in range(3)] if rot else [0.0, 0.0, 0.0]
        s = draw.u(*cfg.scale_range) if scl else 1.0
        rec["rotation"].append(rot), rec["angles"].append(angles)
        rec["scale"].append(scl), rec["scale_factor"].append(s)
        if rot or scl:
            x, y = _warp(image[b], label[b], _rotation(angles) * s, patch)
        else:
            x, y = center_crop(image[b:b + 1], label[b:b + 1], patch)
            x, y = x[0], y[0]
        outs_x.append(x)
        outs_y.append(y)
    image = torch.stack(outs_x).contiguous()
    label = torch.stack(outs_y).contiguous()
    devgen = draw.device_generator(image.device)

    # 2 noise
    for b in range(B):
        on = draw.bernoulli(cfg.p_noise)
        std = draw.u(*cfg.noise_std_range) if on else 0.0
        rec["noise"].append(on), rec["noise_std"].append(std)
        if on:
            image[b] += std * torch.randn(image[b].shape, generator=devgen, device=image.device)
    # 3 blur
    for b in range(B):
        on = draw.bernoulli(cfg.p_blur)
        rec["blur"].append(on)
        sig = []
        if on:
            for c in range(C):
                if draw.bernoulli(cfg.p_blur_channel):
                    sigmas = [draw.u(*cfg.blur_sigma_range) for _ in range(3)]
                    sig.append((c, sigmas))
                    x = image[b, c][None, None]
                    for axis, sgm in enumerate(sigmas):
                        x = _gaussian_blur_1d(x, sgm, axis)
                    image[b, c] = x[0, 0]
        rec["blur_sigma"].append(sig)
    # 4 brightness, 5 contrast
    for b in range(B):
        on = draw.bernoulli(cfg.p_brightness)
        f = [draw.bg(cfg.brightness_range) for _ in range(C)] if on else []
        rec["brightness"].append(on), rec["brightness_factor"].append(f)
        for c, fc in enumerate(f):
            image[b, c] *= fc
    for b in range(B):
        on = draw.bernoulli(cfg.p_contrast)
        f = [draw.bg(cfg.contrast_range) for _ in range(C)] if on else []
        rec["contrast"].append(on), rec["contrast_factor"].append(f)
        for c, fc in enumerate(f):
            x = image[b, c]
            lo, hi, mean = x.min(), x.max(), x.mean()
            image[b, c] = torch.clamp((x - mean) * fc + mean, lo, hi)
    # 6 low resolution
    for b in range(B):
        on = draw.bernoulli(cfg.p_lowres)
        zooms = []
        if on:
            for c in range(C):
                if draw.bernoulli(cfg.p_lowres_channel):
                    z = draw.u(*cfg.lowres_zoom_range)  # per channel, the same on all axes
                    zooms.append((c, z))
                    small = [max(int(round(s * z)), 1) for s in patch]
                    x = F.interpolate(image[b, c][None, None], size=small, mode="nearest-exact")
                    image[b, c] = F.interpolate(x, size=patch, mode="trilinear", align_corners=False)[0, 0]
        rec["lowres"].append(on), rec["lowres_zoom"].append(zooms)
    # 7 inverted gamma, 8 gamma
    for key, p, invert in (("gamma_inverted", cfg.p_gamma_inverted, True), ("gamma", cfg.p_gamma, False)):
        for b in range(B):
            on = draw.bernoulli(p)
            g = [draw.bg(cfg.gamma_range) for _ in range(C)] if on else []
            rec[key].append(on)
            rec["gamma_value"].append((key, g))
            for c, gc in enumerate(g):
                image[b, c] = _gamma(image[b, c], gc, invert)
    # 9 mirroring (exact)
    for b in range(B):
        axes = [ax for ax in cfg.mirror_axes if draw.bernoulli(cfg.p_mirror)]
        rec["mirror"].append(axes)
        if axes:
            dims = [a + 1 for a in axes]
            image[b] = torch.flip(image[b], dims)
            label[b] = torch.flip(label[b], dims)
    # 10 mask image, 11 -1 -> 0, 12 pyramid
    mask_ch = [use_mask_for_norm] * C if isinstance(use_mask_for_norm, bool) else list(use_mask_for_norm)
    outside = label[:, 0] < 0
    for c in range(C):
        if mask_ch[c]:
            image[:, c][outside] = 0
    label = torch.where(label < 0, torch.zeros_like(label), label)
    if record is not None:
        record.update(rec)
    return image, label_pyramid(label, cfg.n_ds_scales)
