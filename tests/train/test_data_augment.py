"""Augmentation: image/label alignment under spatial transforms, probabilities and ranges, exact mirroring."""
import math

import pytest
import torch

from mednext_fast.train import augment as A

OFF = A.NO_AUGMENTATION


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny tensors: intra-op thread hand-offs cost more than the work on a shared 2-core machine
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _blobs(shape=(40, 40, 40), batch=2, seed=0):
    """Label with 3 classes (spheres/boxes) and a 2-channel image holding the one-hot of classes 1 and 2."""
    g = torch.Generator().manual_seed(seed)
    zz = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij"))
    labels = []
    for _ in range(batch):
        c = torch.rand(3, generator=g) * 10 + 15
        lab = torch.zeros(shape, dtype=torch.int16)
        lab[((zz - c.view(3, 1, 1, 1)) ** 2).sum(0) < 8 ** 2] = 1
        lo = (torch.rand(3, generator=g) * 8 + 6).long()
        lab[lo[0]:lo[0] + 9, lo[1]:lo[1] + 5, lo[2]:lo[2] + 12] = 2
        labels.append(lab)
    label = torch.stack(labels)[:, None]
    image = torch.cat([(label == 1).float(), (label == 2).float()], 1)
    return image, label


def _decode(image):
    """Class per voxel from the one-hot image: background weight = 1 - sum."""
    bg = 1 - image.sum(1, keepdim=True)
    return torch.cat([bg, image], 1).argmax(1, keepdim=True)


def test_spatial_transforms_keep_image_and_label_aligned():
    image, label = _blobs()
    cfg = A.AugmentConfig(p_rotation=1, p_scale=1, p_noise=0, p_blur=0, p_brightness=0, p_contrast=0, p_lowres=0,
                          p_gamma_inverted=0, p_gamma=0, p_mirror=0.5)
    g = torch.Generator().manual_seed(1)
    rec = {}
    for _ in range(3):
        out, pyramid = A.augment(image, label, g, patch_size=(20, 20, 20), config=cfg, record=rec)
        assert out.shape == (2, 2, 20, 20, 20)
        assert all(rec["rotation"]) and all(rec["scale"])
        # 20^3 patch * 1.4 scale, rotated, stays inside the 40^3 source: no -1 region, so the image
        # (one-hot resampled trilinearly) decodes to exactly the label the transform produced
        assert torch.equal(_decode(out), pyramid[0])
        assert pyramid[0].max() == 2 and (pyramid[0] == 1).any()


def test_spatial_transform_geometry():
    # a 90 degree rotation about axis 0 maps (i, j, k) -> a known permutation/flip; checks the matrix
    # convention the image and label share (not only that they agree with each other)
    image, label = _blobs(shape=(21, 21, 21), batch=1)
    x, y = A._warp(image[0], label[0], A._rotation([math.pi / 2, 0, 0]), (21, 21, 21))
    # src = R @ out (centred): out[j, k] takes src[j*c - k*s, j*s + k*c] = src[-k, j], i.e. a clockwise
    # quarter turn in the (axis 1, axis 2) plane = torch.rot90(k=-1) over those dims
    assert torch.equal(y, torch.rot90(label[0], k=-1, dims=(2, 3)))
    assert torch.allclose(x, torch.rot90(image[0], k=-1, dims=(2, 3)), atol=1e-4)
    ident_x, ident_y = A._warp(image[0], label[0], torch.eye(3, dtype=torch.float64), (21, 21, 21))
    assert torch.allclose(ident_x, image[0], atol=1e-5) and torch.equal(ident_y, label[0])


def test_outside_source_becomes_minus_one_then_background():
    image, label = _blobs(shape=(16, 16, 16), batch=1)
    cfg = A.AugmentConfig(p_rotation=0, p_scale=1, scale_range=(2.0, 2.0), p_noise=0, p_blur=0, p_brightness=0,
                          p_contrast=0, p_lowres=0, p_gamma_inverted=0, p_gamma=0, p_mirror=0)
    g = torch.Generator().manual_seed(0)
    x, y = A._warp(image[0], label[0], torch.eye(3, dtype=torch.float64) * 2.0, (16, 16, 16))
    assert (y[:, 0, 0, 0] == -1).all() and (x[:, 0, 0, 0] == 0).all()  # corner maps outside the source
    out, pyr = A.augment(image, label, g, config=cfg, use_mask_for_norm=True)
    assert pyr[0].min() >= 0 and (out[:, :, 0, 0, 0] == 0).all()


def test_probabilities_and_ranges_with_fixed_seed():
    n_batches, B = 60, 32
    image = torch.randn(B, 2, 8, 8, 8)
    label = torch.zeros(B, 1, 8, 8, 8, dtype=torch.int16)
    g = torch.Generator().manual_seed(1234)
    recs = []
    for _ in range(n_batches):
        rec = {}
        A.augment(image, label, g, record=rec)
        recs.append(rec)
    n = n_batches * B
    cfg = A.AugmentConfig()

    def flags(key):
        return [v for r in recs for v in r[key]]

    def check(freq, p, n_trials):
        tol = 4.5 * math.sqrt(p * (1 - p) / n_trials)
        assert abs(freq - p) < tol, (freq, p, tol)

    for key, p in [("rotation", cfg.p_rotation), ("scale", cfg.p_scale), ("noise", cfg.p_noise), ("blur", cfg.p_blur),
                   ("brightness", cfg.p_brightness), ("contrast", cfg.p_contrast), ("lowres", cfg.p_lowres),
                   ("gamma_inverted", cfg.p_gamma_inverted), ("gamma", cfg.p_gamma)]:
        check(sum(flags(key)) / n, p, n)
    mirrored = [ax for axes in flags("mirror") for ax in axes]
    for ax in range(3):
        check(mirrored.count(ax) / n, 0.5, n)
    # ranges
    angles = [a for on, ang in zip(flags("rotation"), flags("angles")) if on for a in ang]
    assert max(abs(a) for a in angles) <= math.radians(30) and max(abs(a) for a in angles) > math.radians(25)
    scales = [s for on, s in zip(flags("scale"), flags("scale_factor")) if on]
    assert 0.7 <= min(scales) < 0.75 and 1.35 < max(scales) <= 1.4
    stds = [s for on, s in zip(flags("noise"), flags("noise_std")) if on]
    assert 0 <= min(stds) and max(stds) <= 0.1
    sig = [(c, s) for per in flags("blur_sigma") for c, s in per]
    check(len(sig) / (2 * sum(flags("blur"))), cfg.p_blur_channel, 2 * sum(flags("blur")))
    assert all(0.5 <= v <= 1.0 for _, s in sig for v in s)
    bright = [f for fs in flags("brightness_factor") for f in fs]
    assert all(0.75 <= f <= 1.25 for f in bright)
    check(sum(f < 1 for f in bright) / len(bright), 0.5, len(bright))  # BGContrast: half below 1
    zooms = [z for per in flags("lowres_zoom") for _, z in per]
    check(len(zooms) / (2 * sum(flags("lowres"))), cfg.p_lowres_channel, 2 * sum(flags("lowres")))
    assert all(0.5 <= z <= 1.0 for z in zooms) and min(zooms) < 0.55
    gammas = [v for _, gs in flags("gamma_value") for v in gs]
    assert all(0.7 <= v <= 1.5 for v in gammas)


def test_each_intensity_transform_acts_only_when_drawn():
    image = torch.randn(2, 1, 12, 12, 12) + 3
    label = torch.randint(0, 3, (2, 1, 12, 12, 12), dtype=torch.int16)
    g = torch.Generator().manual_seed(0)
    out, pyr = A.augment(image, label, g, config=OFF)
    assert torch.equal(out, image) and torch.equal(pyr[0], label.long())
    for field in ("p_noise", "p_blur", "p_brightness", "p_contrast", "p_lowres", "p_gamma_inverted", "p_gamma"):
        cfg = A.AugmentConfig(**{**{f: 0 for f in ("p_rotation", "p_scale", "p_noise", "p_blur", "p_brightness",
                                                    "p_contrast", "p_lowres", "p_gamma_inverted", "p_gamma",
                                                    "p_mirror")}, field: 1, "p_blur_channel": 1, "p_lowres_channel": 1})
        rec = {}
        out, pyr = A.augment(image, label, torch.Generator().manual_seed(3), config=cfg, record=rec)
        assert not torch.allclose(out, image), field
        assert torch.equal(pyr[0], label.long()), field  # intensity transforms never touch labels
    # gamma keeps mean and std
    off = ("p_rotation", "p_scale", "p_noise", "p_blur", "p_brightness", "p_contrast", "p_lowres", "p_gamma_inverted",
           "p_mirror")
    cfg = A.AugmentConfig(**{**{f: 0 for f in off}, "p_gamma": 1})
    out, _ = A.augment(image, label, torch.Generator().manual_seed(5), config=cfg)
    assert torch.allclose(out.mean((2, 3, 4)), image.mean((2, 3, 4)), atol=1e-4)
    assert torch.allclose(out.std((2, 3, 4)), image.std((2, 3, 4)), atol=1e-3)


def test_mirroring_is_exact():
    image = torch.randn(4, 2, 6, 7, 8)
    label = torch.randint(-1, 3, (4, 1, 6, 7, 8), dtype=torch.int16)
    cfg = A.AugmentConfig(p_rotation=0, p_scale=0, p_noise=0, p_blur=0, p_brightness=0, p_contrast=0, p_lowres=0,
                          p_gamma_inverted=0, p_gamma=0, p_mirror=0.5)
    g = torch.Generator().manual_seed(7)
    seen = set()
    for _ in range(6):
        rec = {}
        out, pyr = A.augment(image, label, g, config=cfg, record=rec)
        for b, axes in enumerate(rec["mirror"]):
            seen.add(tuple(axes))
            dims = [a + 1 for a in axes]
            exp_x = torch.flip(image[b], dims) if dims else image[b]
            exp_y = torch.flip(label[b], dims) if dims else label[b]
            assert torch.equal(out[b], exp_x)
            assert torch.equal(pyr[0][b], exp_y.clamp(min=0).long())
    assert len(seen) >= 4  # several axis combinations occurred


def test_label_pyramid_scales_and_seed_determinism():
    image, label = _blobs(shape=(32, 32, 32))
    a = A.augment(image, label, torch.Generator().manual_seed(9), patch_size=(16, 16, 16))
    b = A.augment(image, label, torch.Generator().manual_seed(9), patch_size=(16, 16, 16))
    assert [tuple(t.shape[2:]) for t in a[1]] == [(16,) * 3, (8,) * 3, (4,) * 3, (2,) * 3, (1,) * 3]
    assert torch.equal(a[0], b[0]) and all(torch.equal(x, y) for x, y in zip(a[1], b[1]))
    with pytest.raises(ValueError, match="label"):
        A.augment(image, label[:, :, :5], torch.Generator())


def _reference_label_warp(lab, matrix, patch):
    """Independent reference: each label's one-hot through grid_sample, argmax; outside = -1."""
    S = torch.tensor(lab.shape[1:], dtype=torch.float64)
    axes = [torch.arange(p, dtype=torch.float64) - (p - 1) / 2 for p in patch]
    out = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)
    src = out @ matrix.T + (S - 1) / 2
    grid = (2 * src / (S - 1) - 1).flip(-1).float()[None]
    values = torch.arange(-1, int(lab.max()) + 1)
    onehot = (lab[0][None] == values.view(-1, 1, 1, 1)).float()
    w = torch.nn.functional.grid_sample(onehot[None], grid, mode="bilinear", padding_mode="zeros",
                                        align_corners=True)[0]
    w[0] += 1 - w.sum(0)
    return values[w.argmax(0)][None]


def test_label_warp_equals_one_hot_argmax():
    g = torch.Generator().manual_seed(3)
    # blocky random labels (many boundaries, 5 values incl. -1) and random rotation + scale
    lab = torch.randint(-1, 4, (1, 9, 8, 10), generator=g).repeat_interleave(3, 1).repeat_interleave(3, 2)
    lab = lab.repeat_interleave(3, 3).short()
    image = torch.zeros((1,) + lab.shape[1:])
    for seed in range(4):
        angles = (torch.rand(3, generator=g) - 0.5).tolist()
        matrix = A._rotation(angles) * (0.7 + 0.7 * float(torch.rand((), generator=g)))
        _, ours = A._warp(image, lab, matrix, (20, 18, 22))
        ref = _reference_label_warp(lab, matrix, (20, 18, 22))
        assert (ours.long() == ref).float().mean() > 0.999, seed  # ties (measure zero) may break differently


def test_mask_image_outside_nonzero_region_when_use_mask_for_norm():
    image = torch.randn(2, 2, 6, 6, 6) + 10
    label = torch.zeros(2, 1, 6, 6, 6, dtype=torch.int16)
    label[:, :, :2] = -1  # outside the nonzero mask (as preprocessing marks it)
    out, pyr = A.augment(image, label, torch.Generator().manual_seed(0), config=OFF, use_mask_for_norm=[True, False])
    assert (out[:, 0, :2] == 0).all() and torch.equal(out[:, 0, 2:], image[:, 0, 2:])
    assert torch.equal(out[:, 1], image[:, 1])  # channel without mask-for-norm untouched
    assert (pyr[0][:, :, :2] == 0).all()        # -1 trains as background
