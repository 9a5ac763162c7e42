"""An nnU-Net v2 checkpoint of our trainers as a ``mednext_fast.MedNeXt`` (no nnunetv2 needed).

    model = load_model("nnUNet_results/Dataset001_X/nnUNetTrainerMedNeXt_B_k3__nnUNetPlans__3d_fullres_mednext",
                       fold=0)                    # or the path of a checkpoint_*.pth

The architecture comes from the trainer's name (nnUNetTrainerMedNeXt_{S,B,M,L}_k{3,5,7}, suffixes allowed)
or, for the generic nnUNetTrainerMedNeXt, from the plans stored in the checkpoint; the weights load strictly.
The model is returned with its deep-supervision heads (nnU-Net trains them) and ``do_ds`` off, so it returns
full-resolution logits. nnU-Net's preprocessing (crop, transpose, resampling, normalisation) is not part of
the model: feed it images preprocessed as the plans say, or predict with ``nnUNetv2_predict``.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from mednext_fast.checkpoint_io import strip_prefixes
from mednext_fast.model import MedNeXt
from mednext_fast.nnunet import network


def _safe_globals() -> list:
    """nnU-Net checkpoints pickle a few plain objects besides tensors (the logger's numpy floats); allowing
    exactly these keeps torch.load's weights_only protection for everything else."""
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar
    return [scalar, np.dtype, type(np.dtype(np.float64)), type(np.dtype(np.float32)), type(np.dtype(np.int64))]


def checkpoint_path(path: str, fold="0", checkpoint: str = "checkpoint_final.pth") -> str:
    """``path`` itself if it is a file, else ``path``/fold_<fold>/<checkpoint> of an nnU-Net results folder."""
    if os.path.isfile(path):
        return path
    candidate = os.path.join(path, f"fold_{fold}", checkpoint)
    if not os.path.isfile(candidate):
        folds = sorted(d for d in os.listdir(path) if d.startswith("fold_")) if os.path.isdir(path) else []
        raise FileNotFoundError(f"no nnU-Net checkpoint at {candidate} (folds there: {folds or 'none'}); pass "
                                "fold= / checkpoint= (e.g. 'checkpoint_best.pth') or the checkpoint file itself")
    return candidate


def read_checkpoint(path: str, trust_pickle: bool = False) -> dict:
    """The checkpoint dict of an nnU-Net v2 training (network_weights, trainer_name, init_args, ...).

    Read with ``weights_only=True`` plus the few plain types nnU-Net stores; a file holding other objects
    needs ``trust_pickle=True`` (only for files you trust: unpickling runs code).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        if trust_pickle:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        else:
            with torch.serialization.safe_globals(_safe_globals()):
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises several types for a refused or broken file
        raise ValueError(f"{path}: could not be read as an nnU-Net checkpoint ({str(err).splitlines()[0]}); if it "
                         "is a file you trust that holds other Python objects, pass trust_pickle=True") from err
    if not isinstance(obj, dict) or not isinstance(obj.get("network_weights"), dict):
        raise ValueError(f"{path}: not an nnU-Net v2 checkpoint (no 'network_weights'); for a bare state_dict "
                         "or a train/run.py checkpoint use mednext_fast.load_state_dict_file")
    return obj


def config_from_checkpoint(ckpt: dict, where: str = "checkpoint") -> dict:
    """The MedNeXt kwargs of a checkpoint of our trainers (from the trainer name, else the stored plans)."""
    name = str(ckpt.get("trainer_name", ""))
    config = network.config_for_trainer_name(name)
    if config is not None:
        return config
    init = ckpt.get("init_args") or {}
    try:
        arch = _resolve(init["plans"]["configurations"], init["configuration"])["architecture"]["arch_kwargs"]
    except (KeyError, TypeError):
        arch = None
    if arch is None:
        raise ValueError(f"{where}: trainer {name!r} is not a mednext-fast trainer and the checkpoint holds no "
                         "MedNeXt architecture; build the MedNeXt yourself and load "
                         "mednext_fast.load_state_dict_file(path)")
    return network.config_from_arch_kwargs(arch, f"{where} (trainer {name!r})")


def _resolve(configurations: dict, name: str) -> dict:
    """A plans configuration with its inherits_from chain applied, as nnU-Net's PlansManager does."""
    config = dict(configurations[name])
    parent = config.pop("inherits_from", None)
    if parent is None:
        return config
    merged = _resolve(configurations, parent)
    merged.update(config)
    return merged


def load_model(path: str, fold="0", checkpoint: str = "checkpoint_final.pth", backend: str = "auto",
               trust_pickle: bool = False) -> MedNeXt:
    """The trained MedNeXt of an nnU-Net results folder (``fold``, ``checkpoint``) or checkpoint file."""
    path = checkpoint_path(path, fold, checkpoint)
    ckpt = read_checkpoint(path, trust_pickle)
    state = strip_prefixes(ckpt["network_weights"])
    config = config_from_checkpoint(ckpt, path)
    in_channels, n_classes = state["stem.weight"].shape[1], state["out_0.conv_out.weight"].shape[1]
    # All heads, as trained; do_ds off so the forward returns full-resolution logits (set it to get all five).
    model = MedNeXt(in_channels=in_channels, n_classes=n_classes, deep_supervision=True, backend=backend, **config)
    model.do_ds = False
    model.load_state_dict(state, strict=True)
    return model.eval()
