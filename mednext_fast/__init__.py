"""mednext-fast: a fast, drop-in MedNeXt for PyTorch.

>>> import mednext_fast as mf
>>> model = mf.create_mednext("B", in_channels=1, n_classes=3, kernel_size=5)
>>> mf.upkern(model, "b_k3.pt")            # UpKern from a trained kernel-3 checkpoint
>>> mf.set_backend(model, "torch")         # or 'auto' / 'triton' / 'cpp'
"""
from .accelerate import accelerate
from .backends import BACKENDS, BackendUnavailable
from .blocks import MedNeXtBlock, MedNeXtDownBlock, MedNeXtUpBlock, OutBlock
from .checkpoint_io import load_state_dict_file, save_atomic
from .configs import VARIANTS, create_mednext
from .convert import convert_state_dict
from .model import MedNeXt
from .upkern import upkern


def set_backend(model: MedNeXt, name: str) -> MedNeXt:
    """Switch every block of ``model`` to backend ``name`` ('auto', 'torch', 'triton' or 'cpp')."""
    return model.set_backend(name)


__all__ = ["accelerate", "BACKENDS", "BackendUnavailable", "MedNeXt", "MedNeXtBlock", "MedNeXtDownBlock",
           "MedNeXtUpBlock", "OutBlock", "VARIANTS", "convert_state_dict", "create_mednext", "load_state_dict_file",
           "save_atomic", "set_backend", "upkern"]
