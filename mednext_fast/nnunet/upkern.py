"""UpKern for nnU-Net runs: start a MedNeXt (e.g. k5) from a trained smaller-kernel nnU-Net checkpoint (k3).

Used by the trainers' ``MEDNEXT_FAST_UPKERN`` option and by ``python -m mednext_fast.nnunet train ...
-pretrained_weights CKPT`` (nnU-Net's own loader requires equal shapes, so it cannot resize kernels).
"""
from __future__ import annotations

import torch

from mednext_fast.nnunet.network import HEADS, unwrap
from mednext_fast.nnunet.weights import read_checkpoint
from mednext_fast.upkern import upkern

SEGMENTATION_HEADS = ("out_0",) + HEADS


def load_pretrained(model: torch.nn.Module, path: str, log=print) -> None:
    """Load the weights of the nnU-Net checkpoint ``path`` into ``model`` (a MedNeXt, possibly wrapped).

    Depthwise kernels of another size are resized as the paper's UpKern (trilinear). As nnU-Net's
    ``-pretrained_weights`` skips its segmentation layers, heads whose class count differs keep their
    initialisation (fine-tuning on other labels); every other tensor must match up to kernel size.
    """
    target = unwrap(model)
    source = dict(read_checkpoint(path)["network_weights"])
    own = target.state_dict()
    kept = [key for key in own if key.split(".")[0] in SEGMENTATION_HEADS and key in source
            and source[key].shape != own[key].shape]
    for key in kept:
        source[key] = own[key]
    upkern(target, source)
    resized = sum(1 for key, t in own.items() if key in source and source[key].shape != t.shape)
    log(f"mednext-fast UpKern: loaded {path} ({resized} kernel tensors resized"
        + (f"; {len(kept)} head tensors with another class count left as initialised" if kept else "") + ")")
