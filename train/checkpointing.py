"""Training checkpoints: latest and best, written atomically, with everything an exact resume needs.

A checkpoint holds the model weights under 'model' (so ``mednext_fast.load_state_dict_file`` reads it),
optimizer, GradScaler, the next epoch to run, the LR, the EMA pseudo-Dice history, RNG states (python,
numpy, torch CPU and CUDA) and the sampler state. ``latest.pt`` is rewritten at the end of every epoch,
so a killed run loses at most the epoch in progress.
"""
from __future__ import annotations

import os
import pickle
import random

import numpy as np
import torch

from mednext_fast import save_atomic

LATEST, BEST, FINAL = "checkpoint_latest.pt", "checkpoint_best.pt", "checkpoint_final.pt"


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model under DDP / torch.compile wrappers (their state_dict keys carry prefixes)."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def rng_state() -> dict:
    """RNG states as tensors and plain Python values, so checkpoints load with ``weights_only=True``."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = dict(python=random.getstate(), torch=torch.get_rng_state(),
                 numpy=dict(name=name, keys=torch.from_numpy(keys.astype(np.int64)), pos=int(pos),
                            has_gauss=int(has_gauss), cached=float(cached)))
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: str, model, optimizer=None, scaler=None, epoch: int = 0, sampler=None, **extra) -> None:
    """Atomic write; ``epoch`` is the next epoch to run."""
    obj = dict(model=unwrap(model).state_dict(), epoch=epoch, rng=rng_state(), **extra)
    if optimizer is not None:
        obj["optimizer"] = optimizer.state_dict()
        obj["lr"] = optimizer.param_groups[0]["lr"]
    if scaler is not None:
        obj["scaler"] = scaler.state_dict()
    if sampler is not None:
        obj["sampler"] = sampler.state_dict()
    save_atomic(obj, path)


def load(path: str) -> dict:
    """Read a checkpoint written by ``save``; errors name the file and what is wrong with it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as err:
        raise ValueError(f"{path}: unreadable checkpoint (corrupt or truncated?): {err}") from err
    if not isinstance(obj, dict) or "model" not in obj or "epoch" not in obj:
        raise ValueError(f"{path}: not a mednext-fast training checkpoint (no 'model'/'epoch' keys)")
    return obj


def restore(obj: dict, model, optimizer=None, scaler=None, sampler=None, restore_rng: bool = True) -> int:
    """Load ``obj`` into the live objects; returns the next epoch to run."""
    unwrap(model).load_state_dict(obj["model"])
    if optimizer is not None and "optimizer" in obj:
        optimizer.load_state_dict(obj["optimizer"])
    if scaler is not None and "scaler" in obj:
        scaler.load_state_dict(obj["scaler"])
    if sampler is not None and "sampler" in obj:
        sampler.load_state_dict(obj["sampler"])
    if restore_rng and "rng" in obj:
        set_rng_state(obj["rng"])
    return int(obj["epoch"])
