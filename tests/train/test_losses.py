"""Loss, deep-supervision weights, poly LR and AdamW settings against hand computations."""
import numpy as np
import pytest
import torch

from mednext_fast.train.losses import DeepSupervisionLoss, DiceCELoss, ds_weights
from mednext_fast.train.schedule import make_optimizer, poly_lr, set_lr


def test_ds_weights_match_the_mednext_trainer():
    total = 1 + 1 / 2 + 1 / 4 + 1 / 8 + 1 / 16
    assert ds_weights(5) == pytest.approx([1 / total, 0.5 / total, 0.25 / total, 0.125 / total, 0.0625 / total])
    nn_total = 1 + 1 / 2 + 1 / 4 + 1 / 8
    assert ds_weights(5, "nnunet") == pytest.approx([1 / nn_total, 0.5 / nn_total, 0.25 / nn_total,
                                                    0.125 / nn_total, 0.0])
    with pytest.raises(ValueError, match="style"):
        ds_weights(5, "other")


def _hand_loss(logits, target, batch_dice, smooth=1e-5):
    """nnU-Net DC_and_CE by explicit numpy sums: CE - mean foreground soft Dice."""
    x = logits.double().numpy()
    t = target.numpy()
    e = np.exp(x - x.max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)
    n, k = x.shape[:2]
    onehot = np.stack([(t == c) for c in range(k)], 1).astype(float)
    ce = -np.mean(np.log(np.take_along_axis(p, t[:, None], 1)))
    if batch_dice:
        dices = []
        for c in range(1, k):
            tp = (p[:, c] * onehot[:, c]).sum()
            fp = (p[:, c] * (1 - onehot[:, c])).sum()
            fn = ((1 - p[:, c]) * onehot[:, c]).sum()
            dices.append((2 * tp + smooth) / (2 * tp + fp + fn + smooth))
    else:
        dices = []
        for i in range(n):
            for c in range(1, k):
                tp = (p[i, c] * onehot[i, c]).sum()
                fp = (p[i, c] * (1 - onehot[i, c])).sum()
                fn = ((1 - p[i, c]) * onehot[i, c]).sum()
                dices.append((2 * tp + smooth) / (2 * tp + fp + fn + smooth))
    return ce - np.mean(dices)


@pytest.mark.parametrize("batch_dice", [False, True])
def test_dice_ce_equals_hand_computation(batch_dice):
    logits = torch.randn(2, 3, 4, 5, 6)
    target = torch.randint(0, 3, (2, 4, 5, 6))
    target[1][target[1] == 2] = 0  # one sample lacks a class: per-sample Dice then differs from batch Dice
    got = DiceCELoss(batch_dice=batch_dice)(logits, target).item()
    assert got == pytest.approx(_hand_loss(logits, target, batch_dice), rel=1e-5)
    # -Dice (not 1 - Dice): a confident, correct prediction gives a loss near -1
    perfect = torch.nn.functional.one_hot(target, 3).movedim(-1, 1).float() * 40
    assert DiceCELoss(batch_dice=batch_dice)(perfect, target).item() == pytest.approx(-1, abs=1e-4)


def test_deep_supervision_loss_is_weighted_sum_over_nearest_downsampled_targets():
    target = torch.randint(0, 3, (2, 16, 16, 16))
    outs = [torch.randn(2, 3, 16 // 2 ** i, 16 // 2 ** i, 16 // 2 ** i) for i in range(5)]
    base = DiceCELoss()
    got = DeepSupervisionLoss(base, ds_weights(5))(outs, target).item()
    w = ds_weights(5)
    expected = 0.0
    for i, out in enumerate(outs):
        s = 2 ** i
        # nearest-exact picks source index floor((j + 0.5) * s), i.e. s//2 + j*s
        t = target[:, s // 2::s, s // 2::s, s // 2::s] if s > 1 else target
        expected += w[i] * _hand_loss(out, t, False)
    assert got == pytest.approx(expected, rel=1e-5)
    # a ready-made label pyramid (the data pipeline's, (B, 1, ...) each) gives the same loss
    pyramid = [target[:, None, 2 ** i // 2::2 ** i, 2 ** i // 2::2 ** i, 2 ** i // 2::2 ** i] if i else target[:, None]
               for i in range(5)]
    assert DeepSupervisionLoss(base, w)(outs, pyramid).item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="weights"):
        DeepSupervisionLoss(base, [1.0, 0.5])(outs, target)


def test_poly_lr_and_adamw_settings():
    assert poly_lr(0, 1000, 1e-3) == 1e-3
    assert poly_lr(250, 1000, 1e-3) == pytest.approx(1e-3 * 0.75 ** 0.9)
    assert poly_lr(999, 1000, 1e-3) == pytest.approx(1e-3 * 0.001 ** 0.9)
    assert poly_lr(1000, 1000, 1e-3) == 0
    with pytest.raises(ValueError, match="epoch"):
        poly_lr(1001, 1000, 1e-3)
    opt = make_optimizer([torch.nn.Parameter(torch.zeros(2))])
    group = opt.param_groups[0]
    assert isinstance(opt, torch.optim.AdamW)
    assert (group["lr"], group["eps"], group["weight_decay"], group["betas"]) == (1e-3, 1e-4, 3e-5, (0.9, 0.999))
    set_lr(opt, 5e-4)
    assert opt.param_groups[0]["lr"] == 5e-4
