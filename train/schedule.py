"""Optimiser and learning-rate schedule of the MedNeXt trainer (official-mednext.md 1.4).

AdamW with lr 1e-3, eps 1e-4 (their note: 1e-8 can give NaNs in fp16), weight decay 3e-5 on every
parameter (one group), default betas; poly LR lr0 * (1 - epoch / max_epochs) ** 0.9 set once at the start
of each (0-based) epoch, not per iteration.
"""
from __future__ import annotations

import torch

PAPER = dict(lr=1e-3, eps=1e-4, weight_decay=3e-5, poly_exponent=0.9, grad_clip=12.0)


def make_optimizer(params, lr: float = PAPER["lr"], eps: float = PAPER["eps"],
                   weight_decay: float = PAPER["weight_decay"]) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=lr, eps=eps, weight_decay=weight_decay)


def poly_lr(epoch: int, max_epochs: int, initial_lr: float, exponent: float = PAPER["poly_exponent"]) -> float:
    if not 0 <= epoch <= max_epochs:
        raise ValueError(f"epoch must be in [0, {max_epochs}], got {epoch}")
    return initial_lr * (1 - epoch / max_epochs) ** exponent


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
