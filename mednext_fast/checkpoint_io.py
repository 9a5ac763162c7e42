"""Reading MedNeXt weights from checkpoint files, and writing them atomically."""
from __future__ import annotations

import os
import pickle
from collections import OrderedDict

import torch

from .atomic import save_torch

# Where known trainers keep the weights inside a checkpoint dict: nnU-Net v1 and the official MedNeXt
# ('state_dict'), nnU-Net v2 ('network_weights'), ours and many scripts ('model').
_WEIGHT_KEYS = ("state_dict", "network_weights", "model")
# Wrappers add these: DistributedDataParallel ('module.') and torch.compile ('_orig_mod.').
_PREFIXES = ("module.", "_orig_mod.")


def strip_prefixes(state_dict: dict) -> OrderedDict:
    out = OrderedDict()
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        out[key] = value
    return out


def load_state_dict_file(path: str, trust_pickle: bool = False) -> OrderedDict:
    """The model state_dict stored in ``path`` (a bare state_dict or a trainer checkpoint dict).

    Files are read with ``weights_only=True``; nnU-Net v1 checkpoints may also pickle plain Python
    objects, which needs ``trust_pickle=True`` (only for files you trust: unpickling runs code).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as err:
        raise ValueError(f"{path}: holds Python objects beyond tensors; if you trust this file, pass "
                         f"trust_pickle=True ({str(err).splitlines()[0]})") from err
    except (RuntimeError, EOFError, OSError) as err:
        raise ValueError(f"{path}: not a readable PyTorch checkpoint (corrupt or truncated?): {err}") from err
    if isinstance(obj, dict):
        for key in _WEIGHT_KEYS:
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: found no state_dict (a dict of tensors, bare or under one of {_WEIGHT_KEYS})")
    return strip_prefixes(obj)


def save_atomic(obj, path: str) -> None:
    """torch.save to a temporary file in the same folder, then rename: a crash never leaves a torn file."""
    save_torch(obj, path)
