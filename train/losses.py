"""Training loss of the MedNeXt trainer: soft Dice (as -Dice, background excluded) + cross-entropy,
with deep-supervision weighting over the 5 MedNeXt outputs.

Definitions follow nnU-Net's DC_and_CE_loss (shared/reference/nnunet-conventions-and-data.md 2.4):
Dice on softmax probabilities, tp/fp/fn summed over space (and over the batch with ``batch_dice``),
smooth 1e-5 in numerator and denominator, mean over the foreground classes, added as -Dice so the loss
can go negative; CE is torch's cross-entropy on the integer target; both weigh 1.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


def ds_weights(n_outputs: int = 5, style: str = "mednext") -> list:
    """Deep-supervision weights, full resolution first.

    ``mednext``: 1/2**i for every output, normalised to sum 1 (the MedNeXt trainer gives all 5 outputs
    a nonzero weight; its normaliser also counts an unused 1/32 term, which only rescales the whole loss
    by 0.968 and is left out here). ``nnunet``: the same but the lowest-resolution output gets 0.
    """
    if n_outputs < 1:
        raise ValueError(f"n_outputs must be >= 1, got {n_outputs}")
    raw = [1.0 / 2 ** i for i in range(n_outputs)]
    if style == "nnunet" and n_outputs > 1:
        raw[-1] = 0.0
    elif style != "mednext" and style != "nnunet":
        raise ValueError(f"style must be 'mednext' or 'nnunet', got {style!r}")
    total = sum(raw)
    return [w / total for w in raw]


def soft_dice(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5, do_bg: bool = False,
              batch_dice: bool = False) -> torch.Tensor:
    """Mean soft Dice (a value to maximise) of softmax(logits) against an integer target (N, *spatial)."""
    n_classes = logits.shape[1]
    probs = torch.softmax(logits.float(), 1)
    onehot = F.one_hot(target.long(), n_classes).movedim(-1, 1).to(probs.dtype)
    axes = [0] + list(range(2, logits.dim())) if batch_dice else list(range(2, logits.dim()))
    tp = (probs * onehot).sum(axes)
    fp = (probs * (1 - onehot)).sum(axes)
    fn = ((1 - probs) * onehot).sum(axes)
    dice = (2 * tp + smooth) / (2 * tp + fp + fn + smooth)  # (C,) or (N, C)
    if not do_bg:
        dice = dice[1:] if batch_dice else dice[:, 1:]
    return dice.mean()


class DiceCELoss(nn.Module):
    """-soft Dice + CE for one output; ``target`` holds class indices (N, *spatial) or (N, 1, *spatial)."""

    def __init__(self, smooth: float = 1e-5, do_bg: bool = False, batch_dice: bool = False,
                 weight_dice: float = 1.0, weight_ce: float = 1.0):
        super().__init__()
        self.smooth, self.do_bg, self.batch_dice = smooth, do_bg, batch_dice
        self.weight_dice, self.weight_ce = weight_dice, weight_ce

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.dim() == logits.dim():
            target = target[:, 0]
        if target.shape[1:] != logits.shape[2:]:
            raise ValueError(f"target spatial shape {tuple(target.shape[1:])} differs from the logits' "
                             f"{tuple(logits.shape[2:])}")
        ce = F.cross_entropy(logits.float(), target.long())
        dice = soft_dice(logits, target, self.smooth, self.do_bg, self.batch_dice)
        return self.weight_ce * ce - self.weight_dice * dice


def downsample_target(target: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Nearest-exact down-sampling of an integer target (N, *spatial) to ``shape`` (nnU-Net v2 convention)."""
    if tuple(target.shape[1:]) == tuple(shape):
        return target
    return F.interpolate(target[:, None].float(), size=tuple(shape), mode="nearest-exact")[:, 0].long()


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of ``base`` over a list of outputs [full, 1/2, ...]; targets are down-sampled to match.

    A single tensor output (no deep supervision) gets the base loss alone.
    """

    def __init__(self, base: nn.Module, weights: Sequence[float] | None = None):
        super().__init__()
        self.base = base
        self.weights = list(weights) if weights is not None else None

    def forward(self, outputs, target) -> torch.Tensor:
        """``target``: one full-resolution tensor (down-sampled here, nearest-exact) or a list with one
        target per output (e.g. the data pipeline's label pyramid)."""
        if isinstance(target, (list, tuple)):
            targets = list(target)
        else:
            targets = None
        if isinstance(outputs, torch.Tensor):
            return self.base(outputs, targets[0] if targets else target)
        weights = self.weights if self.weights is not None else ds_weights(len(outputs))
        if len(weights) != len(outputs):
            raise ValueError(f"{len(outputs)} deep-supervision outputs but {len(weights)} weights")
        if targets is None:
            full = target[:, 0] if target.dim() == outputs[0].dim() else target
            targets = [downsample_target(full, out.shape[2:]) for out in outputs]
        elif len(targets) < len(outputs):
            raise ValueError(f"{len(outputs)} deep-supervision outputs but only {len(targets)} targets")
        total = 0.0
        for w, out, tgt in zip(weights, outputs, targets):
            if w:
                total = total + w * self.base(out, tgt)
        return total
